"""Checkpoints: what goes in one, how a complete one is told from a half-written one, and finding them.

A checkpoint folder is self-contained: the weights (full model, or the LoRA adapter with the trained
chat-token rows) in safetensors, the tokenizer with the speaker tokens, speaker_map.json, the
resolved config (fizzbot.yaml), and what resuming needs (training_state.pt: optimizer, scheduler,
step, data position; rng-rank<r>.pt per worker). `fizzbot_checkpoint.json`, the manifest, is written
last and lists every file with its size: a folder whose manifest is missing or disagrees with the
files on disk is incomplete and never taken as the latest.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

from fizzbot.artifacts.io import atomic_write_text, is_partial
from fizzbot.artifacts.prepared import SPEAKER_MAP  # noqa: F401  (a checkpoint carries its speaker map under the same name)

MANIFEST = "fizzbot_checkpoint.json"
TRAINING_STATE = "training_state.pt"
CONFIG_FILE = "fizzbot.yaml"
BASE_DIR = "base"
COMPLETED = "COMPLETED"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def write_manifest(folder: Path, info: dict) -> None:
    files = {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    atomic_write_text(folder / MANIFEST, json.dumps({**info, "files": files}, indent=2) + "\n")


def read_manifest(folder: str | Path) -> dict | None:
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(folder: str | Path) -> bool:
    return incomplete_reason(folder) is None


def incomplete_reason(folder: str | Path, only=lambda name: True) -> str | None:
    """Why a checkpoint folder is not complete (naming the file), or None when it is; `only` picks the
    manifest's files that count."""
    folder = Path(folder)
    if is_partial(folder):
        return "a partial folder, still being written or left by an interrupted write"
    manifest = read_manifest(folder)
    if manifest is None:
        return f"no {MANIFEST} (still being written, or interrupted before it was)"
    for name, size in manifest.get("files", {}).items():
        if not only(name):
            continue
        path = folder / name
        if not path.is_file():
            return f"{name} is missing (the manifest lists it)"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size:,} bytes, the manifest says {size:,} (cut short or changed)"
    return None


WEIGHT_SUFFIXES = (".safetensors", ".bin")


def check_loadable(folder: str | Path) -> None:
    """Refuse a fizzbot checkpoint (a folder with a manifest) whose weight files disagree with its
    manifest: loading it would load garbage. (Its other files may be edited by hand, a speaker map
    say; a model folder without a manifest, not written by fizzbot, passes.)"""
    folder = Path(folder)
    if read_manifest(folder) is None:
        return
    reason = incomplete_reason(folder, only=lambda name: name.endswith(WEIGHT_SUFFIXES))
    if reason is not None:
        raise ValueError(f"{folder}: not a complete checkpoint: {reason}; not loading it")


def checkpoints_of(run_dir: str | Path) -> list[tuple[int, Path, dict]]:
    """Complete checkpoints of one run, by step."""
    found = []
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return found
    for child in run_dir.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            reason = incomplete_reason(child)
            if reason is None:
                found.append((int(match.group(1)), child, read_manifest(child)))
            elif read_manifest(child) is not None:  # torn, not merely in progress: say so
                print(f"[fizzbot] skipping {child}: {reason}", file=sys.stderr, flush=True)
    return sorted(found, key=lambda item: item[0])


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the lowest validation loss (the latest where none has one)."""
    found = checkpoints_of(run_dir)
    if not found:
        return None
    scored = [(m.get("val_loss"), step, path) for step, path, m in found if m.get("val_loss") is not None]
    if scored:
        return min(scored, key=lambda item: (item[0], -item[1]))[2]
    return found[-1][1]


def run_dirs(runs_root: str | Path, name: str | None = None) -> list[Path]:
    """Run folders (`<root>/<name>/<timestamp>/`), oldest first by timestamp name."""
    root = Path(runs_root)
    names = [root / name] if name else [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    found = [run for parent in names if parent.is_dir() for run in parent.iterdir() if run.is_dir() and not run.name.startswith(".")]
    return sorted(found, key=lambda p: (p.name, str(p)))


def find_latest(runs_root: str | Path = "runs", name: str | None = None) -> Path:
    """`--latest`: the newest run that has a complete checkpoint, and its best checkpoint."""
    for run in reversed(run_dirs(runs_root, name)):
        best = best_checkpoint(run)
        if best is not None:
            return best
    where = f"{runs_root}/{name}" if name else str(runs_root)
    raise FileNotFoundError(f"no complete checkpoint under {where}/ (train first: fizzbot train --config ...)")


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
