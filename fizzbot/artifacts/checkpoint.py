"""Checkpoints: what goes in one, how a complete one is told from a half-written one, and finding them.

A checkpoint folder is self-contained: the weights (full model, or the LoRA adapter with the trained
chat-token rows) in safetensors, the tokenizer with the speaker tokens, speaker_map.json, the
resolved config (fizzbot.yaml), and what resuming needs (training_state.pt: optimizer, scheduler,
step, data position; rng-rank<r>.pt per worker). `fizzbot_checkpoint.json`, the manifest, is written
last and lists every worker's files with their sizes: a folder whose manifest is missing or disagrees
with the files in storage is incomplete and never taken as the latest. Runs may live in a local
folder or under a URI (`storage`); `fetch_checkpoint` brings a remote checkpoint into a local cache.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path

from fizzbot.artifacts import storage
from fizzbot.artifacts.io import atomic_write_text, is_partial
from fizzbot.artifacts.prepared import SPEAKER_MAP  # noqa: F401  (a checkpoint carries its speaker map under the same name)

MANIFEST = "fizzbot_checkpoint.json"
TRAINING_STATE = "training_state.pt"
CONFIG_FILE = "fizzbot.yaml"
BASE_DIR = "base"
COMPLETED = "COMPLETED"
UPDATE_FILE = "fizzbot_update.json"  # a `fizzbot update` run: its figures and whether it was promoted
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_files(folder: Path) -> dict[str, int]:
    """The files of a local checkpoint folder (its part written by one worker), with their sizes."""
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def merge_rank_files(parts: list[dict[str, int]]) -> dict[str, int]:
    """One file list from every worker's part of a checkpoint (Ray Train merges the folders).

    Two workers writing the same name with different sizes would overwrite each other in storage:
    that is a bug, refused here rather than found at load time.
    """
    merged: dict[str, int] = {}
    for rank, files in enumerate(parts):
        for name, size in files.items():
            if name in merged and merged[name] != size:
                raise ValueError(f"checkpoint file {name} is written by two workers with different sizes (rank {rank})")
            merged[name] = size
    return dict(sorted(merged.items()))


def write_manifest(folder: Path, info: dict, files: dict[str, int] | None = None) -> None:
    """The manifest, written last: `files` lists every worker's files (default: this folder's)."""
    files = checkpoint_files(folder) if files is None else files
    atomic_write_text(folder / MANIFEST, json.dumps({**info, "files": files}, indent=2) + "\n")


def read_manifest(folder: str | Path) -> dict | None:
    try:
        return json.loads(storage.read_text(storage.join(folder, MANIFEST)))
    except (OSError, FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def is_complete(folder: str | Path) -> bool:
    """A manifest whose files are all there with their sizes (local folder or URI)."""
    return incomplete_reason(folder) is None


def incomplete_reason(folder: str | Path, only=lambda name: True) -> str | None:
    """Why a checkpoint folder (local or a URI) is not complete, naming the file, or None when it is;
    `only` picks the manifest's files that count."""
    if not storage.is_uri(folder) and is_partial(folder):
        return "a partial folder, still being written or left by an interrupted write"
    manifest = read_manifest(folder)
    if manifest is None:
        return f"no {MANIFEST} (still being written, or interrupted before it was)"
    present = storage.file_sizes(folder)
    for name, size in manifest.get("files", {}).items():
        if not only(name):
            continue
        if name not in present:
            return f"{name} is missing (the manifest lists it)"
        if present[name] != size:
            return f"{name} is {present[name]:,} bytes, the manifest says {size:,} (cut short or changed)"
    return None


WEIGHT_SUFFIXES = (".safetensors", ".bin")


def check_loadable(folder: str | Path) -> None:
    """Refuse a fizzbot checkpoint (a folder with a manifest) whose weight files disagree with its
    manifest: loading it would load garbage. (Its other files may be edited by hand, a speaker map
    say; a model folder without a manifest, not written by fizzbot, passes.)"""
    if read_manifest(folder) is None:
        return
    reason = incomplete_reason(folder, only=lambda name: name.endswith(WEIGHT_SUFFIXES))
    if reason is not None:
        raise ValueError(f"{folder}: not a complete checkpoint: {reason}; not loading it")


def checkpoints_of(run_dir: str | Path) -> list[tuple[int, str | Path, dict]]:
    """Complete checkpoints of one run (a local folder, as Paths, or a URI, as strings), by step."""
    found = []
    for name in storage.list_dirs(run_dir):
        match = CHECKPOINT_RE.match(name)
        if not match:
            continue
        child = storage.join(run_dir, name)
        reason = incomplete_reason(child)
        if reason is None:
            found.append((int(match.group(1)), child, read_manifest(child)))
        elif read_manifest(child) is not None:  # torn, not merely in progress: say so
            print(f"[fizzbot] skipping {child}: {reason}", file=sys.stderr, flush=True)
    return sorted(found, key=lambda item: item[0])


def best_checkpoint(run_dir: str | Path) -> str | Path | None:
    """The complete checkpoint with the lowest validation loss (the latest where none has one)."""
    found = checkpoints_of(run_dir)
    if not found:
        return None
    scored = [(m.get("val_loss"), step, path) for step, path, m in found if m.get("val_loss") is not None]
    if scored:
        return min(scored, key=lambda item: (item[0], -item[1]))[2]
    return found[-1][1]


def prune(run_dir: str | Path, keep: int) -> list[str | Path]:
    """Delete the complete checkpoints of a run beyond the `keep` best by validation loss, never the
    latest; returns what it deleted. Ray Train prunes the checkpoints it recorded; this also catches
    those an attempt that died wrote before Ray recorded them."""
    found = checkpoints_of(run_dir)
    if not found:
        return []
    latest = found[-1][1]
    scored = sorted(found, key=lambda f: (f[2].get("val_loss", math.inf), -f[0]))
    removed = [path for _, path, _ in scored[keep:] if path != latest]
    for path in removed:
        storage.remove_dir(path)
    return removed


def run_dirs(runs_root: str | Path, name: str | None = None) -> list[str | Path]:
    """Run folders (`<root>/<name>/<timestamp>/`), oldest first by timestamp name."""
    parents = [name] if name else [n for n in storage.list_dirs(runs_root) if not n.startswith(".")]
    found = [
        (run, storage.join(runs_root, parent, run))
        for parent in parents
        for run in storage.list_dirs(storage.join(runs_root, parent))
        if not run.startswith(".")
    ]
    return [path for _, path in sorted(found, key=lambda item: (item[0], str(item[1])))]


def promoted(run_dir: str | Path) -> bool:
    """False for a run of `fizzbot update` that was not promoted (its fizzbot_update.json says so)."""
    try:
        return bool(json.loads(storage.read_text(storage.join(run_dir, UPDATE_FILE))).get("promoted", True))
    except (OSError, FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return True


def find_latest(runs_root: str | Path = "runs", name: str | None = None) -> str | Path:
    """`--latest`: the newest run that has a complete checkpoint, and its best checkpoint (a local
    folder, or a URI when `runs_root` is one: `fetch_checkpoint` brings it here). A `fizzbot update`
    run that was not promoted is passed over: the model in use stays the latest."""
    for run in reversed(run_dirs(runs_root, name)):
        if not promoted(run):
            continue
        best = best_checkpoint(run)
        if best is not None:
            return best
    where = f"{runs_root}/{name}" if name else str(runs_root)
    raise FileNotFoundError(f"no complete checkpoint under {where}/ (train first: fizzbot train --config ...)")


def fetch_checkpoint(location: str | Path) -> Path:
    """A checkpoint as a local folder: a local path as it is; a URI copied into the local cache.

    Only a complete checkpoint (manifest and files agree) is copied, and only the files its manifest
    lists; the copy is checked against the manifest again, so a half-uploaded or torn checkpoint is
    refused, and a cached copy is reused only when it is complete.
    """
    if not storage.is_uri(location):
        return Path(location)
    local = storage.cache_dir("checkpoints", str(location))
    # Several processes of a node (training workers, Serve replicas) may want the same copy at once.
    with storage.file_lock(local):
        if is_complete(local):
            return local
        manifest = read_manifest(location)
        if manifest is None or not is_complete(location):
            raise FileNotFoundError(f"{location} is not a complete fizzbot checkpoint (no manifest, or files missing)")
        storage.download(location, local, files=sorted(manifest["files"]) + [MANIFEST])
        if not is_complete(local):
            raise FileNotFoundError(f"{location}: the downloaded copy does not match its manifest (changed while copying?)")
    return local


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
