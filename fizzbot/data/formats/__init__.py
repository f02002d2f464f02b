"""Chat export readers: one module per format, all yielding `Message` rows.

`expand_inputs` turns the user's paths (files, folders, Slack zips) into `SourceUnit`s, the unit of
parallel reading; `read_unit` reads one. A format is detected per file unless the config names one.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from fizzbot.data.messages import InputError, Message, ReadOptions

FORMATS = ("seed", "discord", "discord_csv", "slack", "telegram", "irc")


@dataclass(frozen=True)
class SourceUnit:
    """One piece of input read by one task: a file, or one day file of a Slack export."""

    path: str
    format: str
    index: int = 0  # position among all units: with the line number it orders ties in time
    member: str | None = None  # Slack: the day file (inside the folder or the zip)
    channel: str | None = None  # Slack: the channel folder's name


# format name -> (module, function); modules load on first use.
_READERS = {
    "seed": ("seed", "read"),
    "discord": ("discord", "read_json"),
    "discord_csv": ("discord", "read_csv"),
    "slack": ("slack", "read"),
    "telegram": ("telegram", "read"),
    "irc": ("irc", "read"),
}


def _reader(fmt: str) -> Callable[[SourceUnit, ReadOptions], Iterator[Message]]:
    import importlib

    module, function = _READERS[fmt]
    return getattr(importlib.import_module(f"fizzbot.data.formats.{module}"), function)


def read_unit(unit: SourceUnit, opts: ReadOptions) -> Iterator[Message]:
    """Messages of one unit, in file order, with `order` set so that ties in time keep it."""
    reader = _reader(unit.format)
    base = unit.index << 32
    for position, message in enumerate(reader(unit, opts)):
        message.order = base + position
        yield message


def _sniff(path: Path) -> str:
    """Guess a file's format from its name and first bytes."""
    from fizzbot.data.formats import irc

    name = path.name.lower()
    if name.endswith(".zip"):
        return "slack"
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=str(path)) from None
    if not head.strip():
        raise InputError("empty file", path=str(path))
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Sniffing needs the first line only: a bad byte further on (or a multi-byte character cut at
        # the 4096-byte mark) is for the reader to report, under data.on_error, with its line.
        text = head[: exc.start].decode("utf-8")
        if "\n" not in text.lstrip("\ufeff \t\r\n") and exc.start < len(head) - 4:
            raise InputError(f"not UTF-8 (byte {exc.start})", path=str(path), line=text.count("\n") + 1) from None
    stripped = text.lstrip("\ufeff \t\r\n")
    if name.endswith(".csv") or stripped.startswith("AuthorID,") or stripped.startswith('"AuthorID"'):
        return "discord_csv"
    if stripped.startswith("{"):
        compact = "".join(stripped[:2000].split())
        if '"guild":' in compact or '"channel":{' in compact:
            return "discord"
        if '"messages":' in compact or '"chats":' in compact or '"personal_information":' in compact:
            if '"date_unixtime"' in compact or '"chats":' in compact or '"type":"personal_chat"' in compact:
                return "telegram"
            if '"guild"' not in compact:
                return "telegram"
        return "seed"  # JSON lines of {"username", "content", "timestamp"}
    if stripped.startswith("["):
        compact = "".join(stripped[:2000].split())
        if compact.startswith('[{"type":"message"') or '"ts":"' in compact:
            raise InputError(
                "looks like one day file of a Slack export; give the whole export folder or zip",
                path=str(path),
            )
        if compact.startswith("[{") or compact == "[" or compact.startswith("[]"):
            return "seed"
    if irc.looks_like_irc(stripped.split("\n", 1)[0]):
        return "irc"  # "[HH:MM] <nick> text", "=== nick has joined", "--- Log opened ...", ...
    if name.endswith((".log", ".txt")):
        return "irc"  # a log whose first line is odd: the reader names each line it cannot read
    raise InputError(
        "unknown export format; name it with data.format (one of: " + ", ".join(FORMATS) + ")",
        path=str(path),
        line=1,
    )


def _is_slack_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "channels.json").is_file() or (path / "users.json").is_file())


def _is_documentation(path: Path) -> bool:
    """Files that ride along with exports and data sets but hold no messages."""
    name = path.name.lower()
    return name.startswith((".", "readme", "license", "licence", "notice")) or name.endswith(".md")


def expand_inputs(paths: list[str], fmt: str = "auto", errors: list[InputError] | None = None) -> list[SourceUnit]:
    """Every readable unit under `paths`, in a stable order (sorted within each folder).

    With `errors` (`on_error: skip`), a file whose format cannot be told (empty, unknown shape) is
    reported there and left out instead of stopping everything; a missing path is always an error.
    """
    units: list[SourceUnit] = []

    def sniff(path: Path) -> str | None:
        try:
            return _sniff(path)
        except InputError as error:
            if errors is None:
                raise
            errors.append(error)
            return None

    def add(path: Path, chosen: str | None) -> None:
        if chosen is None:
            return
        if chosen == "slack":
            from fizzbot.data.formats import slack

            for member, channel in slack.day_files(path):
                units.append(SourceUnit(str(path), "slack", len(units), member=member, channel=channel))
        else:
            units.append(SourceUnit(str(path), chosen, len(units)))

    if not paths:
        raise InputError("no input given (use --input PATH or data.inputs)", path="data.inputs")
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError("no such file or folder", path=raw)
        if path.is_dir():
            if fmt in ("auto", "slack") and _is_slack_folder(path):
                add(path, "slack")
                continue
            # A Slack export folder inside the folder is one input, not a heap of JSON files.
            exports = [p for p in path.rglob("*") if fmt == "auto" and _is_slack_folder(p)]
            files = [
                p for p in path.rglob("*")
                if p.is_file() and not _is_documentation(p) and not any(e in p.parents for e in exports)
            ]
            if not files and not exports:
                raise InputError("folder holds no files", path=raw)
            for item in sorted(files + exports):
                add(item, "slack" if item in exports else sniff(item) if fmt == "auto" else fmt)
        else:
            if fmt == "slack" or (fmt == "auto" and path.suffix.lower() == ".zip"):
                if not zipfile.is_zipfile(path):
                    raise InputError("not a zip file (a Slack export is a folder or a zip)", path=raw)
                add(path, "slack")
            else:
                add(path, sniff(path) if fmt == "auto" else fmt)
    return units


def read_bytes(path: str | Path, data: bytes | None = None) -> bytes:
    """A file's bytes (or `data`, read from an archive), refusing an empty one."""
    try:
        raw = data if data is not None else Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=str(path)) from None
    if not raw.strip():
        raise InputError("empty file", path=str(path))
    return raw


def read_text(path: str | Path, data: bytes | None = None) -> str:
    """A whole file as UTF-8 text (a BOM dropped), an undecodable byte located by its line."""
    raw = read_bytes(path, data)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"not UTF-8 (byte {exc.start})", path=str(path), line=line) from None


def load_json(path: str | Path, data: bytes | None = None) -> object:
    """Parse a JSON document, with the error located by line and column."""
    text = read_text(path, data)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON: {exc.msg} (column {exc.colno})", path=str(path), line=exc.lineno) from None
