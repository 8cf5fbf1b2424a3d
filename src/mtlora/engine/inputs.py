"""What one input is, and how it is read: its texts, its shape, and the task it names.

The engine (many adapters) and `TaskPredictor` (one) take the same forms of input. Only the engine reads
a text's `<task>` / `task:` prefix as the name of a task (`engine_request`); a predictor has one task to
answer with and leaves the text as given.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from mtlora.config import ROUTER_ADAPTER
from mtlora.errors import InputError, UnknownTaskError, likely_meant, train_hint
from mtlora.routing import Request, split_prefix
from mtlora.routing.base import SHAPE_NAMES
from mtlora.routing.explicit import prefix_name
from mtlora.tasks import TaskKind
from mtlora.tasks.base import require_text

Input = str | tuple[str, str] | dict[str, str]
# A `<name>` set apart as a task token, as the README writes it: "<span>WIN..." is markup, not a task's name.
TASK_TOKEN = re.compile(r"\s*<[^<>\s]+>(\s|$)")
# A named task is answered as named: a router given with it would be ignored without a word.
NAMED_AND_ROUTED = "task '{task}' and router '{router}' were both given: name the task, or route, not both"


class NameSet(Protocol):
    """What `name in names` needs; a Registry answers it for names only, so it is not a Container[str]."""

    def __contains__(self, name: str, /) -> bool: ...


@dataclass(frozen=True)
class KnownTasks:
    """What an engine knows of task names, to tell what a text's prefix names."""

    loaded: Mapping[str, TaskKind]  # the adapters loaded, the learned router's among them once it runs
    stored: NameSet  # the registry's adapters
    project: Container[str]  # the project file's tasks, trained or not

    @property
    def tasks(self) -> list[str]:
        """The task adapters loaded (the learned router's is not one)."""
        return [name for name in self.loaded if name != ROUTER_ADAPTER]


def read_input(item: object, task: str | None = None) -> Request:
    """An input's texts and shape, and the task the caller or a `{text, task}` dict names (both must agree);
    a prefix of the text stays in it. `item` is what a caller passed: anything but an `Input` is refused."""
    if isinstance(item, str):
        return Request(item, None, "text", task)
    if isinstance(item, tuple) and len(item) == 2 and all(isinstance(t, str) for t in item):
        return Request(item[0], item[1], "pair", task)
    if isinstance(item, dict) and {"question", "context"} <= item.keys():
        return Request(item["question"], item["context"], "qa", task)
    if isinstance(item, dict) and "text" in item:
        named = item.get("task")
        if task and named and named != task:  # as a `<task>` prefix that disagrees is: neither silently wins
            raise InputError(f"the input names task '{named}', but task '{task}' was named: drop one of them")
        return read_input(item["text"] if item.get("text_pair") is None else (item["text"], item["text_pair"]),
                          task or named)
    raise InputError(f"an input is a text, a (text, text_pair) tuple or a {{question, context}} dict; "
                     f"got {type(item).__name__}: {item!r:.80}")


def require_texts(request: Request) -> Request:
    """`request`, its texts checked: an empty one is refused before any task or router sees it."""
    require_text(request.text, "question" if request.shape == "qa" else "text")
    if request.text_pair is not None:
        require_text(request.text_pair, "context" if request.shape == "qa" else "text_pair")
    return request


def engine_request(item: Input, task: str | None, known: KnownTasks) -> Request:
    """An input as the engine's routers see it: its text(s), its shape, and the task it names, as an
    argument or as the prefix of its (first) text, which is then cut off."""
    request = read_input(item, task)
    if request.shape != "qa":  # a question is never read for a task's name
        named, text = _task_named(request.text, request.task, known)
        request = replace(request, text=text, task=named)
    return require_texts(request)


def _task_named(text: str, task: str | None, known: KnownTasks) -> tuple[str | None, str]:
    """The task named by the caller or by the text's `<task>` / `task:` prefix (both must agree), and
    the text without that prefix. A prefix the named task reads as its own (a multitask adapter's
    task token, which may also be the name of a task) stays in the text."""
    prefixed, rest = split_prefix(text, known.tasks)
    if prefixed is None and task is None:
        _refuse_a_prefix_naming_no_loaded_task(text, known)
    if task and prefixed and prefixed != task and task in known.loaded \
            and known.loaded[task].reads_its_own_prefix(text):
        return task, text
    return _one_task(task, prefixed), rest


def _refuse_a_prefix_naming_no_loaded_task(text: str, known: KnownTasks) -> None:
    """Refuse a text whose `<name>` / `name:` prefix names a task the engine has not loaded: routed as
    text, prefix and all, it would be answered by another task. That is a task trained but not loaded,
    a task of the project file not trained yet, or a `<name>` a letter or two off a loaded task's name
    (a typo; `name:` is left alone, as "Summary: ..." may well begin a text). Not where the prefix is a
    loaded adapter's task token: the engine sends the text to that adapter."""
    name = prefix_name(text)
    if name is None or name in known.loaded or name == ROUTER_ADAPTER \
            or any(kind.starts_with_own_token(text) for kind in known.loaded.values()):
        return
    tasks = known.tasks
    if name in known.stored:
        where = "it is in the registry"
        fix = f"load it: Engine.add('{name}'), or POST /v1/adapters/{name} on a server"
    elif name in known.project:
        where, fix = "the project file has it, but it is not trained", train_hint(name)
    elif TASK_TOKEN.match(text) and likely_meant(name, tasks, cutoff=0.75):  # stricter: it refuses
        where, fix = "no task has that name", ""  # the error's own guess names the one meant
    else:
        return
    raise UnknownTaskError("task", name, tasks, where=f" loaded in the engine (the text's prefix names it; "
                                                      f"{where})", fix=fix)


def _one_task(named: str | None, prefixed: str | None) -> str | None:
    """The task a caller named, as an argument or as the text's `<task>` prefix; both must agree."""
    if named and prefixed and named != prefixed:
        raise InputError(f"the text starts with <{prefixed}>, but task '{named}' was named: drop one of them")
    return named or prefixed


@contextlib.contextmanager
def naming_input(index: int, count: int) -> Iterator[None]:
    """An error about one of several inputs says which: `inputs[3]: text is empty`."""
    try:
        yield
    except InputError as error:
        if count == 1:
            raise
        raise type(error)(f"inputs[{index}]: {error}") from error
    except UnknownTaskError as error:  # a prefix naming a task that is not loaded
        if count > 1:
            error.args = (f"inputs[{index}]: {error}",)  # the same error, its listing and fix kept
        raise


def wrong_shape(task: str, kind: TaskKind, shape: str, others: Sequence[str] = ()) -> InputError:
    """A task given an input of a shape it does not take, with the tasks loaded beside it that take that shape."""
    wanted, given = SHAPE_NAMES[kind.input_shape], SHAPE_NAMES[shape]
    alternatives = f", or name a task that takes {given}: {', '.join(others)}" if others else ""
    return InputError(f"task '{task}' ({kind.name}) takes {wanted}, but {given} was given (give it {wanted}"
                      f"{alternatives})")
