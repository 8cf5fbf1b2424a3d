"""A plain folder of adapters: `<root>/<task>/` holds a standard PEFT adapter and `manifest.json`.

    <root>/
      sentiment/                 adapter_config.json, adapter_model.safetensors, manifest.json
      .baselines/sentiment/      the head-only baseline's head weights (for evaluation)
      .routers/embeddings/       the learned router's head over token embeddings (routing/token_head.py)
      .staging/                  folders being written; never listed or loaded
      .runs/sentiment/           resumable training checkpoints
      .lock                      held for the moment a folder is swapped, removed or its manifest rewritten

A folder is an adapter only once its manifest is written, and its files must match the checksums
the manifest records, so a half-written or damaged adapter is refused instead of loaded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mtlora import atomic
from mtlora.config import validate_task_name
from mtlora.errors import AdapterNotFoundError, CorruptAdapterError, RegistryError, train_hint
from mtlora.registry.manifest import FORMAT_VERSION, MANIFEST_FILE, Manifest

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():  # it would list no adapters, and saving would fail
            raise RegistryError(f"registry {self.root} is a file, not a folder; set registry: in the project file "
                                "to a folder (training makes it)")

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # ---- paths ------------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.root / checked_name(name)

    def baseline_path(self, name: str) -> Path:
        return self.root / ".baselines" / checked_name(name)

    def run_path(self, name: str, method: str) -> Path:
        return self.root / ".runs" / checked_name(name) / method

    @property
    def staging(self) -> Path:
        return self.root / ".staging"

    # ---- reading ----------------------------------------------------------------------------------

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_FILE).is_file())

    def __contains__(self, name: str) -> bool:
        # One stat rather than a listing: the engine asks this of each text whose prefix looks like a name.
        try:
            return (self.path(name) / MANIFEST_FILE).is_file()
        except RegistryError:  # not a name a task can have
            return False

    def manifest(self, name: str) -> Manifest:
        """The manifest of adapter `name`.

        Raises:
            AdapterNotFoundError: no such adapter (the error lists the ones there are).
            CorruptAdapterError: the manifest is unreadable.
        """
        folder = self.path(name)
        if not folder.exists() and any(self.staging.glob(f"{name}.old-*")):  # a save cut between its renames?
            with self.swapping():
                atomic.recover_folder(folder, self.staging)
        return self._read_manifest(name)

    def _read_manifest(self, name: str) -> Manifest:
        folder = self.path(name)
        manifest_file = folder / MANIFEST_FILE
        if not manifest_file.is_file():
            raise AdapterNotFoundError(str(self.root), name, self.names())
        try:
            raw = json.loads(manifest_file.read_text(encoding="utf-8"))
            version = raw.get("format_version", FORMAT_VERSION) if isinstance(raw, dict) else FORMAT_VERSION
            if isinstance(version, int) and version > FORMAT_VERSION:
                raise RegistryError(f"{manifest_file}: written by a newer mtlora (manifest format {version}; this "
                                    f"one reads up to {FORMAT_VERSION}): upgrade mtlora to load it")
            return Manifest.model_validate(raw)
        except (json.JSONDecodeError, ValidationError) as exc:
            raise CorruptAdapterError(f"{manifest_file}: unreadable manifest ({exc}); retrain the adapter") from None

    def verified(self, name: str) -> Manifest:
        """The manifest, after checking every file it lists against its checksum."""
        manifest = self.manifest(name)
        folder = self.path(name)
        for file, expected in manifest.files.items():
            actual = sha256_file(folder / file) if (folder / file).is_file() else None
            if actual != expected:
                problem = "is missing" if actual is None else "does not match its checksum"
                raise CorruptAdapterError(
                    f"adapter '{name}': {folder / file} {problem}; the adapter is damaged, retrain it "
                    f"with `{train_hint(name)}`"
                )
        return manifest

    def versions(self) -> dict[str, str | None]:
        """Each adapter's `Manifest.version` by name; None for one whose manifest cannot be read now."""
        versions: dict[str, str | None] = {}
        for name in self.names():
            try:
                versions[name] = self.manifest(name).version
            except RegistryError:  # loading it says why; a listing is no place to fail
                versions[name] = None
        return versions

    def manifests(self) -> Iterator[Manifest]:
        for name in self.names():
            yield self.manifest(name)

    # ---- writing ----------------------------------------------------------------------------------

    def save(self, name: str, write_files: Callable[[Path], None], manifest: Manifest) -> Path:
        """Write an adapter atomically: `write_files(folder)` fills a staging folder, then the manifest
        (with checksums of what was written) goes in last and the folder is renamed into place."""
        target = self.path(name)
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic.staged_folder(target, self.staging, self.swapping) as folder:
            write_files(folder)
            files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}
            manifest = manifest.model_copy(update={"files": files})
            atomic.write_text(folder / MANIFEST_FILE, manifest.model_dump_json(indent=2) + "\n")
        return target

    @contextmanager
    def staged(self, target: Path) -> Iterator[Path]:
        with atomic.staged_folder(target, self.staging, self.swapping) as folder:
            yield folder

    def update(self, name: str, /, **changes: Any) -> Manifest:
        """Rewrite fields of a manifest atomically."""
        with self.swapping():
            return self._rewrite(name, self._read_manifest(name).model_copy(update=changes))

    def record_metrics(self, name: str, evaluated: Manifest, split: str, metrics: dict[str, Any]) -> Manifest:
        """Add one split's metrics to the manifest of the adapter version that was `evaluated`, beside
        what other evaluations recorded meanwhile; refuse if the adapter has been saved again since."""
        with self.swapping():
            manifest = self._read_manifest(name)
            if manifest.version != evaluated.version:
                raise RegistryError(f"adapter '{name}' was saved again (retrained?) while it was evaluated; its "
                                    "new version keeps its own record: evaluate it again")
            return self._rewrite(name, manifest.model_copy(update={"metrics": {**manifest.metrics, split: metrics}}))

    def _rewrite(self, name: str, manifest: Manifest) -> Manifest:
        atomic.write_text(self.path(name) / MANIFEST_FILE, manifest.model_dump_json(indent=2) + "\n")
        return manifest

    def remove(self, name: str) -> None:
        if name not in self:
            raise AdapterNotFoundError(str(self.root), name, self.names())
        for folder in (self.path(name), self.baseline_path(name)):
            if folder.is_dir():
                atomic.remove_folder(folder, self.staging, self.swapping)

    @contextmanager
    def swapping(self) -> Iterator[None]:
        """Held, across processes, by whoever swaps, removes, recovers or rewrites a folder of the
        registry: a reader recovering an interrupted save must not run between a live save's renames,
        nor a manifest rewrite between a save's read and its write. Each holds it for a few renames."""
        if fcntl is None:  # Windows: no flock; one writer at a time is then the user's to keep
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def checked_name(name: str) -> str:
    try:
        return validate_task_name(name)
    except ValueError as exc:
        raise RegistryError(str(exc)) from None


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
