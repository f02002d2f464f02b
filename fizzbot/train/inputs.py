"""Training data as the driver resolves it: a prepared folder or one JSONL, local or at a URI; the
split of a single JSONL; and the fingerprint that says whether two runs trained on the same data.

A URI (`data.path=s3://bucket/prepared`) is copied into the local cache first: the driver checks every
row, trains the tiny BPE on the targets and fingerprints the files, so it reads them whole anyway;
Ray Data then reads that copy on the driver's node (`local://`) and spreads the tokenised rows.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from fizzbot.artifacts import storage
from fizzbot.artifacts.io import atomic_write_bytes, iter_jsonl
from fizzbot.artifacts.prepared import SPEAKER_MAP, STATS_FILE, TRAIN_FILE, VAL_FILE, context_settings, open_prepared
from fizzbot.chat.speakers import SpeakerMap
from fizzbot.config import FizzbotConfig
from fizzbot.errors import InputError


@dataclass
class TrainingData:
    train_path: Path
    val_path: Path
    speaker_map: SpeakerMap
    fingerprint: str  # of the train rows, the val rows and the speaker map
    # How the prepared folder windowed its contexts (stats.json): serving trims by the same rules.
    context: dict = field(default_factory=dict)


def resolve_data(cfg: FizzbotConfig, run_dir: Path) -> TrainingData:
    """A prepared folder, or one JSONL (the original tool's) split by val_split or val_jsonl."""
    path, val_jsonl = fetch_data(cfg.data.path, cfg.data.val_jsonl)
    prepared = open_prepared(path, val_jsonl)
    train_path, val_path = prepared.train_path, prepared.val_path
    if val_path is None:
        train_path, val_path = split_single_file(train_path, cfg.data.val_split, cfg.data.val_split_by, run_dir / "data")
    if not val_path.is_file() or val_path.stat().st_size == 0:
        raise InputError(
            "no validation rows (set data.val_split above 0 when preparing, or data.val_jsonl)", path=str(val_path)
        )
    context = context_settings(Path(path)) if Path(path).is_dir() else {}
    return TrainingData(train_path, val_path, prepared.speaker_map, data_fingerprint(train_path, val_path, prepared.speaker_map), context)


def fetch_data(path: str, val_jsonl: str | None) -> tuple[str, str | None]:
    """Local paths as they are; a URI's files (a prepared folder's three, or a JSONL and the speaker map
    beside it) copied into the local cache."""
    if val_jsonl and storage.is_uri(val_jsonl):
        parent, name = val_jsonl.rsplit("/", 1)
        val_jsonl = str(_fetch_files(parent, [name]) / name)
    if not storage.is_uri(path):
        return path, val_jsonl
    if not storage.exists(path):
        raise InputError("data.path does not exist (prepare data first, then copy the folder there)", path=path)
    if storage.is_dir(path):
        names = [n for n in (TRAIN_FILE, VAL_FILE, SPEAKER_MAP, STATS_FILE) if storage.is_file(storage.join(path, n))]
        return str(_fetch_files(path, names)), val_jsonl
    parent, name = path.rsplit("/", 1)
    names = [name] + ([SPEAKER_MAP] if storage.is_file(storage.join(parent, SPEAKER_MAP)) else [])
    return str(_fetch_files(parent, names) / name), val_jsonl


def _fetch_files(folder_uri: str, names: list[str]) -> Path:
    # Keyed by the files too: a JSONL and a val_jsonl beside it are two downloads, two folders.
    local = storage.cache_dir("data", f"{folder_uri}/{'+'.join(names)}")
    return storage.download(folder_uri, local, files=names)


def data_fingerprint(train_path: Path, val_path: Path, speaker_map: SpeakerMap) -> str:
    """Same rows in the same files and the same speaker map: the same fingerprint (a content hash)."""
    digest = hashlib.blake2b(digest_size=16)
    for path in (train_path, val_path):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    digest.update(json.dumps(speaker_map.to_json(), sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()


# --- the split of a single JSONL ------------------------------------------------------------------


def _time_key(value, line: int):
    """A row's time for sorting: its `ts` (a number or a sortable string), else its line number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), line)
    if isinstance(value, str) and value:
        try:
            return (0, float(value), line)
        except ValueError:
            return (1, value, line)  # ISO timestamps sort as text
    return (2, line, line)


def split_rows(rows: list[dict], val_split: float, by: str = "time") -> tuple[list[int], list[int]]:
    """(train, val) row indices of a single JSONL's rows, held out as `fizzbot prepare` holds out messages.

    `time`: within each channel, the latest `val_split` of its rows (by `ts`, else by line order) go to
    validation, and rows at the cut's timestamp go with them: a training row's context comes from
    before its target, so it can never hold a validation target. `channel`: whole channels.
    """
    channels: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        channels.setdefault(str(row.get("channel", "")), []).append(index)
    train: list[int] = []
    val: list[int] = []
    if by == "channel":
        if len(channels) < 2:
            raise InputError("data.val_split_by=channel needs rows of at least two channels; use data.val_split_by=time",
                             path="data.val_split_by")
        # A stable pseudo-random order of channels; whole channels are held out until val_split of the rows.
        order = sorted(channels, key=lambda c: hashlib.blake2b(c.encode(), digest_size=8).digest())
        for channel in order:
            room = len(val) < val_split * len(rows) and len(val) + len(channels[channel]) < len(rows)
            (val if room else train).extend(channels[channel])
        return sorted(train), sorted(val)
    for indices in channels.values():
        keys = {i: _time_key(rows[i].get("ts"), i) for i in indices}
        ordered = sorted(indices, key=keys.__getitem__)
        n_val = min(len(ordered), math.floor(len(ordered) * val_split + 0.5))
        if n_val == 0:
            train.extend(ordered)
            continue
        cut = len(ordered) - n_val
        # Rows sharing the first held-out row's time are held out too: nothing after the cut is "earlier".
        while cut > 0 and keys[ordered[cut - 1]][:2] == keys[ordered[cut]][:2]:
            cut -= 1
        train.extend(ordered[:cut])
        val.extend(ordered[cut:])
    return sorted(train), sorted(val)


def split_single_file(path: Path, val_split: float, by: str, out: Path) -> tuple[Path, Path]:
    """Write the split of a single JSONL as train.jsonl and val.jsonl under `out`."""
    if val_split <= 0:
        raise InputError("a single JSONL needs data.val_split > 0 or data.val_jsonl", path=str(path))
    rows, lines = [], []
    for number, row in iter_jsonl(path):
        if not isinstance(row.get("target"), str):
            raise InputError("row has no target", path=str(path), line=number, field="target")
        rows.append(row)
        lines.append(json.dumps(row, ensure_ascii=False).encode())
    train, val = split_rows(rows, val_split, by)
    train_path, val_path = out / TRAIN_FILE, out / VAL_FILE
    atomic_write_bytes(train_path, b"".join(lines[i] + b"\n" for i in train))
    atomic_write_bytes(val_path, b"".join(lines[i] + b"\n" for i in val))
    return train_path, val_path
