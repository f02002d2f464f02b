"""WhatsApp chat exports: the `.txt` that "Export chat" writes, or the `.zip` the app shares (with
`_chat.txt`, or `WhatsApp Chat with <name>.txt`, beside the media).

One message starts on a line with its date and time; it goes on over the following lines until the
next such line. The layout follows the phone:

    Android  12/9/20, 23:55 - Alice: text                 (24-hour clock)
             12/9/20, 11:55 PM - Alice: text              (12-hour; U+202F before PM on recent versions)
             09.12.20, 23:55 - Alice: text                (dotted dates in many European locales)
    iOS      [09/12/2020, 23:55:10] Alice: text
             [12/9/20, 11:55:10 PM] Alice: text

Traps, and what this reader does about them:

- Date order: the locale decides day-month or month-day, and nothing in the file says which. A field
  over 12 settles it for the whole file; else the order under which the dates run forwards; else
  month-first with a 12-hour clock (US) and day-first with a 24-hour one. `YYYY-MM-DD` is read as such.
- Time: the phone's local time, no offset: read in `data.timezone` (default UTC).
- Lines with no `Name:` are system messages (the end-to-end encryption notice, joins, subject
  changes), as are iOS lines whose text starts with an invisible U+200E mark (`Group: \u200eAlice
  added Bob`) and names that are a system sentence (`Alice changed the subject from "a: b"`). Deleted
  messages ("This message was deleted") are system messages too.
- Media: `<Media omitted>` (Android), `image omitted` / `video omitted` / `sticker omitted` / ... (iOS),
  `<attached: 00000012-PHOTO-2020-12-09-23-55-10.jpg>` and `IMG-20201209-WA0001.jpg (file attached)` are
  attachment-only messages with their kind's placeholder (a caption on the following lines is kept as
  the message). `<This message was edited>` at the end of a message is dropped.
- Names are contact names or phone numbers: the speaker is the name as written.
- The channel is the chat's name from the file name (`WhatsApp Chat with Family.txt` -> `Family`; a
  zip's `_chat.txt` takes the zip's name).
- A line before the first dated one is a bad record; a file where no line has a WhatsApp date is not
  a WhatsApp export (a whole-file error).
"""

from __future__ import annotations

import datetime as dt
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from fizzbot.data.messages import InputError, Message, ReadOptions, attachment_kind, clean_content, naive_to_utc

if TYPE_CHECKING:
    from fizzbot.data.formats import SourceUnit

FORMAT = "whatsapp"
_MARKS = "\u200e\u200f\ufeff"
_DATE = r"(?P<date>\d{1,4}[./-]\d{1,2}[./-]\d{1,4})"
_TIME = r"(?P<time>\d{1,2}[:.]\d\d(?:[:.]\d\d)?)(?:[\s\u202f\u00a0]*(?P<ampm>[AaPp]\.?\s?[Mm]\.?))?"
_ANDROID_RE = re.compile("[" + _MARKS + "]*" + _DATE + r",? " + _TIME + r" [-–] (?P<rest>.*)", re.DOTALL)
# iOS always writes the comma after the date; without it `[2020-01-01 12:00:00] <nick>` would be IRC.
_IOS_RE = re.compile("[" + _MARKS + "]*\\[" + _DATE + r", " + _TIME + r"\] (?P<rest>.*)", re.DOTALL)
_NUMBERS_RE = re.compile(r"\d+")
# The name part of a line that is really a system sentence with a colon in it.
_SYSTEM_NAME_RE = re.compile(
    r" changed | added | removed | created (?:group|this group)| left$| joined | was added| were added|end-to-end"
    r"|security code|disappearing messages| pinned a message| deleted | turned (?:on|off) | now an admin",
)
_MEDIA_RE = re.compile(r"(?:<Media omitted>|null|(?P<kind>image|video|audio|sticker|GIF|document|Contact card|video note) omitted)$",
                       re.IGNORECASE)
_ATTACHED_RE = re.compile(r"<attached: (?P<name>[^>]+)>$")
_FILE_ATTACHED_RE = re.compile(r"(?P<name>\S.*?\.\w{1,5}) \(file attached\)$")
_DELETED_RE = re.compile(r"(?:This message was deleted|You deleted this message)\.?$")
_EDITED_SUFFIX = "<This message was edited>"
_LOCATION_RE = re.compile(r"(?:live )?location: https?://\S+$", re.IGNORECASE)
_POLL_RE = re.compile(r"POLL:\n")
_CHAT_NAME_RE = re.compile(
    r"^(?:WhatsApp[- ]Chat|Chat de WhatsApp|Conversa do WhatsApp|Discussion WhatsApp)\s*"
    r"(?:with|mit|met|avec|con|com|med|-)?\s*",
    re.IGNORECASE,
)
_IOS_KINDS = {"image": "image", "video": "video", "audio": "audio", "sticker": "sticker", "gif": "gif",
              "document": "file", "contact card": "contact", "video note": "video"}


def looks_like_whatsapp(first_line: str) -> bool:
    """Whether a file's first line starts like a WhatsApp message (for `_sniff`)."""
    return bool(_IOS_RE.match(first_line) or _ANDROID_RE.match(first_line))


def chat_member(names: list[str]) -> str | None:
    """The chat's text file among a zip's members: `_chat.txt`, `WhatsApp Chat ... .txt`, else the only .txt."""
    texts = [n for n in names if n.lower().endswith(".txt") and not n.startswith("__MACOSX/")]
    for name in texts:
        base = name.rsplit("/", 1)[-1]
        if base == "_chat.txt" or _CHAT_NAME_RE.match(base):
            return name
    return texts[0] if len(texts) == 1 and not any(n.lower().endswith(".json") for n in names) else None


def zip_chat_member(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            member = chat_member(zf.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"not a readable zip file: {exc}", path=str(path)) from None
    if member is None:
        raise InputError("no _chat.txt or WhatsApp chat .txt in the zip", path=str(path))
    return member


def chat_name(unit: "SourceUnit") -> str:
    """`WhatsApp Chat with Family.txt` -> `Family`; a zip's `_chat.txt` is named by the zip."""
    stem = Path(unit.member).stem if unit.member else Path(unit.path).stem
    if stem == "_chat" or not stem:
        stem = Path(unit.path).stem
    name = _CHAT_NAME_RE.sub("", stem).strip(" -_")
    return name or stem


def _raw(unit: "SourceUnit") -> bytes:
    from fizzbot.data.formats import read_bytes

    if unit.member is None:
        return read_bytes(unit.path)
    try:
        with zipfile.ZipFile(unit.path) as zf:
            data = zf.read(unit.member)
    except (zipfile.BadZipFile, OSError, KeyError, EOFError, ValueError) as exc:
        raise InputError(f"cannot read the chat from the zip: {exc}", path=f"{unit.path}/{unit.member}") from None
    return read_bytes(f"{unit.path}/{unit.member}", data)


def _date_order(dates: list[tuple[int, ...]], twelve_hour: bool) -> str:
    """`ymd`, `dmy` or `mdy` for the file's dates (see the module's notes)."""
    if any(a > 31 for a, _, _ in dates):
        return "ymd"
    if any(a > 12 for a, _, _ in dates):
        return "dmy"
    if any(b > 12 for _, b, _ in dates):
        return "mdy"

    def backwards(order: str) -> int:
        keys = [(c, b, a) if order == "dmy" else (c, a, b) for a, b, c in dates]
        return sum(1 for x, y in zip(keys, keys[1:]) if y < x)

    dmy, mdy = backwards("dmy"), backwards("mdy")
    if dmy != mdy:
        return "dmy" if dmy < mdy else "mdy"
    return "mdy" if twelve_hour else "dmy"


def _moment(numbers: tuple[int, ...], order: str, time_text: str, ampm: str | None) -> dt.datetime | None:
    a, b, c = numbers
    year, month, day = (a, b, c) if order == "ymd" else (c, b, a) if order == "dmy" else (c, a, b)
    if year < 100:
        year += 2000
    clock = [int(n) for n in _NUMBERS_RE.findall(time_text)]
    hour, minute, second = clock[0], clock[1], clock[2] if len(clock) > 2 else 0
    if ampm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm.strip()[0] in "Pp" else 0)
    try:
        return dt.datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None


def _body(text: str) -> tuple[str, str | None, bool]:
    """(content, attachment kind, is_system) of a message's text."""
    text = text.strip()
    if text.endswith(_EDITED_SUFFIX):
        text = text[: -len(_EDITED_SUFFIX)].rstrip(" " + _MARKS)
    first, _, caption = text.partition("\n")
    plain = first.lstrip(_MARKS).strip()
    m = _MEDIA_RE.match(plain)
    if m:
        kind = m.group("kind")
        return caption.strip(), _IOS_KINDS.get(kind.lower(), "file") if kind else "media", False
    m = _ATTACHED_RE.match(plain) or _FILE_ATTACHED_RE.match(plain)
    if m:
        return caption.strip(), attachment_kind(m.group("name")), False
    if _LOCATION_RE.match(plain):
        return caption.strip(), "location", False
    if _POLL_RE.match(text):
        return "", "poll", False
    if _DELETED_RE.match(plain) or first.startswith("\u200e"):
        return text.lstrip(_MARKS), None, True  # a deletion, or an iOS system line (marked by U+200E)
    return text, None, False


def read(unit: "SourceUnit", opts: ReadOptions) -> Iterator[Message]:
    from fizzbot.data.formats import read_lines, unit_label

    label = unit_label(unit)
    lines = read_lines(label, _raw(unit), opts)
    channel = chat_name(unit)

    # First pass: the lines that start a message, and the file's date order.
    starts: list[tuple[int, re.Match]] = []
    for index, line in enumerate(lines):
        if line and line[0] in "0123456789[" + _MARKS:
            m = _IOS_RE.match(line) or _ANDROID_RE.match(line)
            if m is not None:
                starts.append((index, m))
    parsed = [tuple(int(n) for n in _NUMBERS_RE.findall(m.group("date"))) for _, m in starts]
    order = _date_order(parsed, any(m.group("ampm") for _, m in starts)) if parsed else "dmy"

    if starts and any(line.strip() for line in lines[: starts[0][0]]):
        first_bad = next(i for i, line in enumerate(lines[: starts[0][0]]) if line.strip())
        opts.bad(InputError(f"not a WhatsApp line: {lines[first_bad][:80]!r}", path=label, line=first_bad + 1,
                            kind="not a WhatsApp line"))
    if not starts:
        first_text = next((i for i, line in enumerate(lines) if line.strip()), None)
        if first_text is not None:
            opts.bad(InputError(f"not a WhatsApp line: {lines[first_text][:80]!r}", path=label, line=first_text + 1,
                                kind="not a WhatsApp line"))
        return

    ends = [index for index, _ in starts[1:]] + [len(lines)]
    for (index, m), numbers, end in zip(starts, parsed, ends):
        moment = _moment(numbers, order, m.group("time"), m.group("ampm"))
        if moment is None:
            opts.bad(InputError(f"not a date and time: {lines[index][:40]!r}", path=label, line=index + 1,
                                kind="not a date and time"))
            continue
        try:
            ts = naive_to_utc(moment, opts.tz)
        except (OverflowError, ValueError):
            opts.bad(InputError(f"not a date and time: {lines[index][:40]!r}", path=label, line=index + 1,
                                kind="not a date and time"))
            continue
        rest = "\n".join([m.group("rest"), *lines[index + 1:end]])
        name, sep, text = rest.partition(": ")
        name = name.strip(_MARKS + " ")
        if not sep or not name or "\n" in name or len(name) > 80 or _SYSTEM_NAME_RE.search(name):
            yield Message(channel, "whatsapp", "WhatsApp", clean_content(rest.lstrip(_MARKS), opts.max_message_chars), ts,
                          is_system=True, format=FORMAT)
            continue
        content, attachment, is_system = _body(text)
        yield Message(
            channel, name, name, clean_content(content, opts.max_message_chars), ts,
            is_system=is_system, format=FORMAT, attachment=attachment,
        )
