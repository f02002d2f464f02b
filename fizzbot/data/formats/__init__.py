"""Chat export readers: one module per format, all yielding `Message` rows.

`expand_inputs` turns the user's paths (files, folders, Slack and WhatsApp zips) into `SourceUnit`s,
the unit of parallel reading; `read_unit` reads one. A format is detected per file unless the config
names one. docs/FORMATS.md lists every format and client with a sample line.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from fizzbot.artifacts.io import OWNER_MARKER
from fizzbot.data.messages import InputError, Message, ReadOptions, safe_text

FORMATS = ("seed", "discord", "discord_csv", "slack", "telegram", "irc", "whatsapp", "matrix")
# Formats of lines or records with no header to check: a file of which no record can be read is not
# one of them at all (a whole-file error), where the other readers check the document's shape first.
_HEADERLESS = frozenset({"seed", "irc", "whatsapp"})
# Files that ride along with exports (a WhatsApp zip's photos, an export's attachments folder).
_MEDIA_SUFFIXES = frozenset(
    ".jpg .jpeg .png .gif .webp .bmp .heic .tif .tiff .svg .mp4 .webm .mov .mkv .avi .3gp .m4v .mp3 .ogg .oga "
    ".opus .wav .m4a .flac .aac .amr .pdf .vcf .doc .docx .xls .xlsx .ppt .pptx .html .htm .css .js .ico".split()
)


@dataclass(frozen=True)
class SourceUnit:
    """One piece of input read by one task: a file, one day file of a Slack export, or a zipped chat."""

    path: str
    format: str
    index: int = 0  # position among all units: with the line number it orders ties in time
    member: str | None = None  # a file inside the folder or zip at `path` (Slack day file, WhatsApp chat)
    channel: str | None = None  # Slack: the channel folder's name


# format name -> (module, function); modules load on first use.
_READERS = {
    "seed": ("seed", "read"),
    "discord": ("discord", "read_json"),
    "discord_csv": ("discord", "read_csv"),
    "slack": ("slack", "read"),
    "telegram": ("telegram", "read"),
    "irc": ("irc", "read"),
    "whatsapp": ("whatsapp", "read"),
    "matrix": ("matrix", "read"),
}


def _reader(fmt: str) -> Callable[[SourceUnit, ReadOptions], Iterator[Message]]:
    import importlib

    module, function = _READERS[fmt]
    return getattr(importlib.import_module(f"fizzbot.data.formats.{module}"), function)


def unit_label(unit: SourceUnit) -> str:
    """How errors name a unit: the file, or the file inside its folder or zip."""
    return f"{unit.path}/{unit.member}" if unit.member else unit.path


def read_unit(unit: SourceUnit, opts: ReadOptions) -> Iterator[Message]:
    """Messages of one unit, in file order, with `order` set so that ties in time keep it.

    A headerless file (lines, records) of which not one record could be read is not its format at
    all: that is one whole-file error instead of a bad record per line.
    """
    reader = _reader(unit.format)
    base = unit.index << 32
    errors_before = len(opts.errors)
    position = -1
    # JSON can spell a lone surrogate (`\ud83d`), which nothing can write as UTF-8; decoded text cannot.
    from_json = unit.format not in _HEADERLESS and unit.format != "discord_csv"
    for position, message in enumerate(reader(unit, opts)):
        message.order = base + position
        if message.ts.__class__ is not float:  # every reader yields floats; this keeps it so downstream
            message.ts = float(message.ts)
        if from_json:
            _make_writable(message)
        yield message
    if position < 0 and unit.format in _HEADERLESS and len(opts.errors) > errors_before:
        first = opts.errors[errors_before]
        del opts.errors[errors_before:]
        raise InputError(
            f"not a {unit.format} file: no record could be read (the first: {first.reason})",
            path=first.path,
            line=first.line,
            field=first.field,
            kind=f"not a {unit.format} file",
        )


def _make_writable(message: Message) -> None:
    if not (message.content.isascii() and message.username.isascii() and message.author_id.isascii() and message.channel.isascii()):
        message.content = safe_text(message.content)
        message.username = safe_text(message.username)
        message.author_id = safe_text(message.author_id)
        message.channel = safe_text(message.channel)


def _first_lines(text: str, count: int = 5) -> list[str]:
    lines = []
    for line in text.split("\n"):
        line = line.strip("\ufeff\u200e\u200f \t\r")
        if line:
            lines.append(line)
            if len(lines) >= count:
                break
    return lines


def _sniff_zip(path: Path) -> str:
    from fizzbot.data.formats import whatsapp

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"not a readable zip file: {exc}", path=str(path)) from None
    return "whatsapp" if whatsapp.chat_member(names) else "slack"


def _sniff(path: Path) -> str:
    """Guess a file's format from its name and first bytes."""
    from fizzbot.data.formats import irc, whatsapp

    name = path.name.lower()
    if name.endswith(".zip"):
        return _sniff_zip(path)
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
        # Sniffing needs the first lines only: a bad byte further on (or a multi-byte character cut at
        # the 4096-byte mark) is for the reader to report, under data.on_error, with its line.
        text = head[: exc.start].decode("utf-8")
        if "\n" not in text.lstrip("\ufeff \t\r\n") and exc.start < len(head) - 4:
            raise InputError(f"not UTF-8 (byte {exc.start})", path=str(path), line=text.count("\n") + 1) from None
    stripped = text.lstrip("\ufeff \t\r\n")
    first = stripped.split("\n", 1)[0].replace('"', "")
    if name.endswith(".csv") or first.startswith(("AuthorID,", "AuthorID;", "Author;Date;", "Author,Date,")):
        return "discord_csv"
    if stripped.startswith("{"):
        compact = "".join(stripped[:2000].split())
        if '"guild":' in compact or '"channel":{' in compact:
            return "discord"
        if '"room_name":' in compact or '"origin_server_ts":' in compact or '"room_id":' in compact:
            return "matrix"
        if '"messages":' in compact or '"chats":' in compact or '"personal_information":' in compact:
            return "telegram"
        return "seed"  # JSON lines of {"username", "content", "timestamp"}
    if stripped.startswith("["):
        compact = "".join(stripped[:2000].split())
        if compact.startswith('[{"type":"message"') or '"ts":"' in compact:
            raise InputError(
                "looks like one day file of a Slack export; give the whole export folder or zip",
                path=str(path),
            )
        if '"origin_server_ts":' in compact and '"sender":' in compact:
            return "matrix"
        if compact.startswith("[{") or compact == "[" or compact.startswith("[]"):
            return "seed"
    lines = _first_lines(stripped)
    if lines and whatsapp.looks_like_whatsapp(lines[0]):
        return "whatsapp"
    if any(irc.looks_like_irc(line) for line in lines):
        return "irc"  # "[HH:MM] <nick> text", weechat, irssi, HexChat, mIRC, ZNC, Textual, ...
    if name.endswith((".log", ".txt", ".weechatlog")):
        return "irc"  # a log whose first lines are odd: the reader names each line it cannot read
    raise InputError(
        "unknown export format; name it with data.format (one of: " + ", ".join(FORMATS) + ")",
        path=str(path),
        line=1,
    )


def _is_slack_folder(path: Path) -> bool:
    """A Slack export: its listings, or (some export tools leave them out) channel folders of day files."""
    if not path.is_dir():
        return False
    if any((path / name).is_file() for name in ("channels.json", "users.json", "groups.json", "dms.json", "mpims.json")):
        return True
    for folder in path.iterdir():
        if folder.is_dir() and not folder.name.startswith("."):
            day = next(folder.glob("[12][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9].json"), None)
            if day is not None:
                try:
                    with day.open("rb") as fh:
                        head = "".join(fh.read(2000).decode("utf-8", "replace").split())
                except OSError:
                    return False
                return head.startswith("[") and '"ts":"' in head
    return False


def _is_documentation(path: Path) -> bool:
    """Files that ride along with exports and data sets but hold no messages."""
    name = path.name.lower()
    return name.startswith((".", "readme", "license", "licence", "notice")) or name.endswith(".md")


def _is_media(path: Path) -> bool:
    return path.suffix.lower() in _MEDIA_SUFFIXES


def _skipped_folder(folder: Path, root: Path, seen: dict[Path, bool]) -> bool:
    """Hidden folders (fizzbot's own partial outputs among them) and folders fizzbot wrote, under `root`."""
    if folder == root or root not in folder.parents:
        return False
    if folder not in seen:
        seen[folder] = (
            folder.name.startswith(".") or (folder / OWNER_MARKER).is_file() or _skipped_folder(folder.parent, root, seen)
        )
    return seen[folder]


def expand_inputs(paths: list[str], fmt: str = "auto", errors: list[InputError] | None = None) -> list[SourceUnit]:
    """Every readable unit under `paths`, in a stable order (sorted within each folder).

    With `errors` (`on_error: skip`), a file whose format cannot be told (empty, unknown shape) is
    reported there and left out instead of stopping everything; a missing path is always an error.
    Folders that fizzbot wrote (a prepared output inside an input folder) and hidden folders are not
    read, nor are media files and documentation.
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
        elif chosen == "whatsapp" and path.suffix.lower() == ".zip":
            from fizzbot.data.formats import whatsapp

            units.append(SourceUnit(str(path), "whatsapp", len(units), member=whatsapp.zip_chat_member(path)))
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
            seen: dict[Path, bool] = {}
            everything = [p for p in path.rglob("*") if not _skipped_folder(p if p.is_dir() else p.parent, path, seen)]
            # A Slack export folder inside the folder is one input, not a heap of JSON files.
            exports = [p for p in everything if fmt == "auto" and _is_slack_folder(p)]
            files = [
                p for p in everything
                if p.is_file() and not _is_documentation(p) and not _is_media(p) and not any(e in p.parents for e in exports)
            ]
            if not files and not exports:
                raise InputError("folder holds no files", path=raw)
            for item in sorted(files + exports):
                add(item, "slack" if item in exports else sniff(item) if fmt == "auto" else fmt)
        else:
            if path.suffix.lower() == ".zip" and fmt in ("auto", "slack", "whatsapp") and not zipfile.is_zipfile(path):
                raise InputError("not a zip file (a Slack or WhatsApp export is a folder, a zip or a .txt)", path=raw)
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


def read_lines(label: str, raw: bytes, opts: ReadOptions) -> list[str]:
    """A text file's lines (a BOM dropped, CRLF read as LF); an undecodable line is reported as a bad
    record, by its line, and left blank (so skipped)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Slow path, for the rare file with bad bytes: report each bad line, keep the others.
        lines = []
        for number, chunk in enumerate(raw.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
            try:
                lines.append(chunk.decode("utf-8").rstrip("\r"))
            except UnicodeDecodeError as exc:
                opts.bad(InputError(f"not UTF-8 (byte {exc.start} of the line)", path=label, line=number))
                lines.append("")
        return lines
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    return text.split("\n")


def load_json(path: str | Path, data: bytes | None = None) -> object:
    """Parse a JSON document, with the error located by line and column."""
    text = read_text(path, data)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON: {exc.msg} (column {exc.colno})", path=str(path), line=exc.lineno) from None
    except RecursionError:
        raise InputError("malformed JSON: nested too deeply", path=str(path), line=1) from None
