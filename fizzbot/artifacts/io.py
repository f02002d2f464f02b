"""Atomic writes, and the folders fizzbot may write: a file or a folder appears complete, or not at all,
and nothing of the user's is ever replaced.

Files are written to a temporary name beside their target and renamed (rename is atomic on POSIX).
Folders are built under a hidden `.<name>.partial-*` sibling and renamed into place at the end; a
crash or a kill leaves only the hidden partial folder, which nothing reads and the next run removes.

A folder fizzbot writes carries a marker file (`.fizzbot`, listing what it wrote where the contents are
fixed). `check_output_folder` refuses to write anywhere else: a folder that is an input or holds one, a
non-empty folder without the marker, or a marked one that holds files fizzbot did not write.
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
OWNER_MARKER = ".fizzbot"
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


# --- folders fizzbot owns ---------------------------------------------------------------------------


def write_owner_marker(folder: str | Path, written_by: str, files: list[str] | None = None) -> None:
    """Mark `folder` as fizzbot's; `files` lists what it holds when that is fixed (a prepared folder)."""
    doc: dict = {"written_by": written_by, "note": "fizzbot replaces folders that carry this file, and no others"}
    if files is not None:
        doc["files"] = sorted(files)
    atomic_write_text(Path(folder) / OWNER_MARKER, json.dumps(doc, indent=1) + "\n")


def read_owner_marker(folder: str | Path) -> dict | None:
    """The marker of a folder fizzbot wrote, or None (no marker, or not one fizzbot could have written)."""
    try:
        doc = json.loads((Path(folder) / OWNER_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def check_output_folder(target: str | Path, *, inputs: list[str] = (), key: str = "data.output") -> None:
    """Refuse a folder that fizzbot may not write or replace, with a one-line error naming it and `key`.

    Refused: an input, a folder that holds an input, a file, a non-empty folder without fizzbot's
    marker, and a marked folder holding anything the marker does not list. An absent or empty folder,
    or one fizzbot wrote, is fine.
    """
    from fizzbot.errors import InputError

    path = Path(target).absolute()
    resolved = path.resolve()
    for raw in inputs:
        source = Path(raw).absolute().resolve()
        if source == resolved:
            raise InputError("is one of the inputs; write the output to a new or empty folder", path=str(path), field=key)
        if resolved in source.parents:
            raise InputError(
                f"holds the input {raw}; write the output to a new or empty folder (it would be replaced whole)",
                path=str(path),
                field=key,
            )
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise InputError("exists and is not a folder", path=str(path), field=key)
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return
    marker = read_owner_marker(path)
    if marker is None:
        raise InputError(
            f"is a folder fizzbot did not write ({len(entries)} entries, no {OWNER_MARKER} marker); "
            "choose a new or empty folder (or, if an older fizzbot wrote it, remove it)",
            path=str(path),
            field=key,
        )
    listed = marker.get("files")
    if isinstance(listed, list):
        strangers = [name for name in entries if name != OWNER_MARKER and name not in listed]
        if strangers:
            raise InputError(
                f"holds {strangers[0]!r}, which fizzbot did not write; move it out or choose another folder",
                path=str(path),
                field=key,
            )


def claim_folder(target: str | Path, *, key: str, written_by: str) -> Path:
    """Create `target` (or take an empty one) as fizzbot's, or take one fizzbot marked; refuse any other."""
    check_output_folder(target, key=key)
    path = Path(target)
    path.mkdir(parents=True, exist_ok=True)
    if read_owner_marker(path) is None:
        write_owner_marker(path, written_by)
    return path
