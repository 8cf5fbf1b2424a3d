"""Writes that are either complete or absent: temporary file or folder in the same place, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Read once, at import: os.umask can only be read by setting it, which would race other threads' writes.
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        _give_default_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def write_bytes_via(path: Path, writer: Any) -> None:
    """Call `writer(tmp_path)` (e.g. matplotlib's savefig) and move the result into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def staged_folder(target: Path, staging: Path,
                  swapping: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
                  ) -> Iterator[Path]:
    """Yield an empty folder to fill; on success it replaces `target`, on error it is deleted.

    The old folder is moved aside before the new one is renamed in (within `swapping()`, a lock that
    keeps `recover_folder` from running between the two renames), and deleted after: a crash in
    between leaves it in `staging`, from where `recover_folder` restores it.
    """
    tmp = staging / f"{target.name}.new-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)  # with `staging`, which another writer may remove when it leaves it empty
    try:
        yield tmp
        _fsync_tree(tmp)
        old = staging / f"{target.name}.old-{uuid.uuid4().hex[:8]}"
        target.parent.mkdir(parents=True, exist_ok=True)
        with swapping():
            if target.exists():
                os.rename(target, old)
            os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(staging)


def remove_folder(target: Path, staging: Path,
                  swapping: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext) -> None:
    """Delete `target` whole or not at all: it is renamed away first (within `swapping()`), so no
    half-deleted copy is ever found in its place."""
    away = staging / f"{target.name}.removed-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True, exist_ok=True)
    with swapping():
        os.rename(target, away)
    shutil.rmtree(away, ignore_errors=True)
    remove_empty(staging)


def remove_empty(*folders: Path) -> None:
    """Remove each of `folders` that is empty, in order (a child before its parent); any other stays."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def recover_folder(target: Path, staging: Path) -> bool:
    """Put back the newest folder moved aside by an interrupted `staged_folder`, if `target` is gone.
    Run it within the lock that the writers' swaps hold: between their renames `target` is gone too."""
    if target.exists() or not staging.is_dir():
        return False
    candidates = sorted(staging.glob(f"{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        return False
    os.rename(candidates[-1], target)
    return True


def _fsync_tree(folder: Path) -> None:
    for file in folder.rglob("*"):
        _give_default_mode(file)
        if file.is_file():
            with file.open("rb") as handle:
                os.fsync(handle.fileno())


def _give_default_mode(path: Path) -> None:
    """The mode a plain `open` or `mkdir` gives under the umask. tempfile and safetensors write 0600, which
    would leave a registry shared by a team readable by its writer alone."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_UMASK)
