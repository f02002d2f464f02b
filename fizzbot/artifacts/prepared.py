"""The prepared-data folder that `fizzbot prepare` writes and training reads.

    <folder>/train.jsonl       rows {"context", "target", "channel", "speaker", "ts"}
    <folder>/val.jsonl         the same, held out
    <folder>/speaker_map.json  who is which speaker token
    <folder>/stats.json        messages read, kept and dropped by each filter, per channel
    <folder>/report.png        the same, drawn
    <folder>/.fizzbot          the marker: fizzbot wrote this folder (and these files), so may replace it

A single JSONL of {context, target} rows (the original tool's `training_examples.jsonl`) with a
`speaker_map.json` beside it is accepted as training data too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fizzbot.artifacts.io import check_output_folder, write_owner_marker
from fizzbot.chat.speakers import SpeakerMap
from fizzbot.errors import InputError

TRAIN_FILE = "train.jsonl"
VAL_FILE = "val.jsonl"
SPEAKER_MAP = "speaker_map.json"
STATS_FILE = "stats.json"
REPORT_FILE = "report.png"


def check_output(output: str | Path, inputs: list[str]) -> None:
    """Refuse an output folder that is, or holds, an input, or holds anything fizzbot did not write."""
    check_output_folder(output, inputs=inputs, key="data.output")


def mark_prepared(folder: str | Path) -> None:
    """The last file of a prepared folder: fizzbot's marker, listing what the folder holds."""
    folder = Path(folder)
    write_owner_marker(folder, "fizzbot prepare", [p.name for p in folder.iterdir()])


@dataclass
class PreparedData:
    train_path: Path
    val_path: Path | None  # None: a single JSONL that the caller splits
    speaker_map: SpeakerMap
    speaker_map_path: Path


def open_prepared(path: str | Path, val_jsonl: str | None = None) -> PreparedData:
    """The files of a prepared folder (or of one JSONL with a speaker map beside it), checked."""
    path = Path(path)
    if not path.exists():
        raise InputError("data.path does not exist (prepare data first: fizzbot prepare --input ... --output ...)", path=str(path))
    if path.is_dir():
        train_path = path / TRAIN_FILE
        if not train_path.is_file():
            raise InputError(f"no {TRAIN_FILE} in the data folder (is this a prepared folder?)", path=str(path))
        map_path = path / SPEAKER_MAP
        val_path = Path(val_jsonl) if val_jsonl else path / VAL_FILE
    else:
        train_path = path
        map_path = path.parent / SPEAKER_MAP
        val_path = Path(val_jsonl) if val_jsonl else None
    if not map_path.is_file():
        raise InputError(f"{SPEAKER_MAP} not found beside the training data", path=str(map_path))
    if train_path.stat().st_size == 0:
        raise InputError("training data is empty", path=str(train_path))
    return PreparedData(train_path, val_path, SpeakerMap.load(map_path), map_path)


def find_speaker_map(path: str | Path) -> Path:
    """A speaker_map.json, or the one inside a prepared or checkpoint folder (`data.speaker_map`)."""
    path = Path(path)
    if path.is_dir():
        path = path / SPEAKER_MAP
    if not path.is_file():
        raise InputError(f"no speaker map here (give a {SPEAKER_MAP}, or a prepared or checkpoint folder holding one)", path=str(path), field="data.speaker_map")
    return path


# The data settings that decide what a context looks like: a checkpoint records the ones its data was
# prepared with, so that serving trims and anonymizes contexts as the windows of its training data were.
CONTEXT_KEYS = ("max_context_messages", "max_context_chars", "max_message_chars", "exclude_speakers", "exclude_mode")


def context_settings(path: str | Path) -> dict:
    """The CONTEXT_KEYS a prepared folder was made with (from its stats.json); {} where none are recorded
    (a single JSONL of the original tool's, or a folder without stats)."""
    stats = Path(path) / STATS_FILE
    try:
        config = json.loads(stats.read_text(encoding="utf-8")).get("config") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {key: config[key] for key in CONTEXT_KEYS if key in config}
