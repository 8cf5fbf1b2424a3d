"""The exceptions mtlora raises, all under one base so callers can catch them together.

    MtloraError
    ├── ConfigError          a project file is invalid (lists every problem at once)
    ├── DataError            a data file or row is unusable (names file, line and field)
    ├── TaskProblems         several tasks of a run cannot train (each one's problem, before any trains)
    ├── UnknownTaskError     a task or task kind that does not exist (lists what does)
    ├── InputError           a prediction input has the wrong shape
    │   └── EmptyTextError   or has no text to read
    ├── TrainingInterrupted  training stopped on Ctrl-C after a checkpoint (the same command resumes)
    └── RegistryError        adapter storage problems
        ├── AdapterNotFoundError
        ├── CorruptAdapterError   files missing or checksums do not match
        ├── BaseModelMismatchError   the adapter was trained on another backbone
        └── AdapterNotServableError  the engine cannot serve it beside other adapters (or has no room left)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def train_hint(task: str | None = None) -> str:
    """The command that trains `task` of a project (all its tasks when None), as messages give it."""
    return "mtlora train PROJECT.yaml" + (f" --task {task}" if task else "")


def likely_meant(name: object, options: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The option a misspelt `name` most likely meant, if one is close (difflib's ratio at least `cutoff`)."""
    close = difflib.get_close_matches(str(name), list(options), 1, cutoff)
    return close[0] if close else None


def did_you_mean(name: object, options: Iterable[str]) -> str:
    """" Did you mean 'x'?" for a misspelt `name`, to end a sentence with; "" when no option is close."""
    meant = likely_meant(name, options)
    return f" Did you mean '{meant}'?" if meant else ""


class MtloraError(Exception):
    """Base class of every error mtlora raises on purpose."""


class ConfigError(MtloraError):
    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        if len(problems) == 1:  # "file not found" is no list
            super().__init__(f"{source}: {problems[0]}")
            return
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problems in the project config:\n{lines}")


class DataError(MtloraError):
    def __init__(self, location: str, message: str, fix: str | None = None):
        self.location = location
        text = f"{location}: {message}"
        if fix:
            text += f" ({fix})"
        super().__init__(text)


class TaskProblems(MtloraError):
    """Several tasks' problems at once, found before any of them trains: fixing one to meet the next, a
    run at a time, costs a user as many runs as there are problems."""

    def __init__(self, problems: dict[str, MtloraError]):
        self.problems = problems
        lines = "\n".join(f"  - {task}: {problem}" for task, problem in problems.items())
        super().__init__(f"{len(problems)} tasks cannot train, so none was trained:\n{lines}")


class UnknownTaskError(MtloraError, KeyError):
    def __init__(self, what: str, name: str, available: list[str], where: str = "", fix: str = ""):
        self.name = name
        self.available = sorted(available)
        listing = ", ".join(self.available) if self.available else "none"
        guess = did_you_mean(name, self.available)
        super().__init__(f"No {what} '{name}'{where}.{guess} Available: {listing}" + (f" ({fix})" if fix else ""))

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class InputError(MtloraError, ValueError):
    pass


class EmptyTextError(InputError):
    """A text is empty, or holds nothing a tokenizer keeps (spaces, control characters)."""


class TrainingInterrupted(MtloraError):
    """Training stopped on Ctrl-C after saving a checkpoint; running the same command resumes it."""


class RegistryError(MtloraError):
    pass


class AdapterNotFoundError(RegistryError, UnknownTaskError):
    def __init__(self, registry: str, name: str, available: list[str], fix: str = ""):
        UnknownTaskError.__init__(self, "adapter", name, available, where=f" in registry {registry}", fix=fix or (
            f"a task of the project file is trained with `{train_hint('NAME')}`; "
            "`mtlora adapters list PROJECT.yaml` shows what is trained"))


class CorruptAdapterError(RegistryError):
    pass


class BaseModelMismatchError(RegistryError):
    pass


class AdapterNotServableError(RegistryError):
    pass
