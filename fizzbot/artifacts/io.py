"""Atomic writes: a file or a folder appears complete, or not at all.

Files are written to a temporary name beside their target and renamed (rename is atomic on POSIX).
Folders are built under a hidden `.<name>.partial-*` sibling and renamed into place at the end; a
crash or a kill leaves only the hidden partial folder, which nothing reads and the next run removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

PARTIAL_MARK = ".partial-"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def is_partial(path: str | Path) -> bool:
    """A folder still being written (or left behind by a crash)."""
    name = Path(path).name
    return name.startswith(".") and PARTIAL_MARK in name


def remove_stale_partials(target: Path) -> None:
    """Remove partial folders that earlier, interrupted writes of `target` left behind."""
    parent = target.parent
    if not parent.is_dir():
        return
    for leftover in parent.glob(f".{target.name}{PARTIAL_MARK}*"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a fresh staging folder; on success it becomes `target`, on error it is removed.

    With `replace`, an existing `target` is swapped out only after the new one is complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    staging = target.parent / f".{target.name}{PARTIAL_MARK}{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        if not replace:
            shutil.rmtree(staging, ignore_errors=True)
            raise FileExistsError(f"{target} already exists")
        old = target.parent / f".{target.name}{PARTIAL_MARK}old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def iter_jsonl(path: str | Path):
    """(line number, parsed object) for each non-empty line; bad JSON raises InputError naming the line."""
    from fizzbot.errors import InputError

    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InputError(f"malformed JSON: {exc}", path=str(path), line=number) from None
            if not isinstance(row, dict):
                raise InputError("expected a JSON object", path=str(path), line=number)
            yield number, row
