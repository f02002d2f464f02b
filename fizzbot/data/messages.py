"""The row every reader produces, and the helpers readers share (timestamps, attachments, content)."""

from __future__ import annotations

import datetime as dt
import functools
import math
from dataclasses import dataclass, field
from typing import Any

from fizzbot.chat.render import clean_text
from fizzbot.errors import InputError  # noqa: F401  (readers raise it from here)

# What an attachment-only message is kept as (data.attachment_placeholders names each kind's text).
ATTACHMENT_KINDS = ("image", "gif", "video", "audio", "sticker", "file", "media", "poll", "location", "contact", "forwarded")

_EXTENSION_KINDS = {
    **dict.fromkeys(("png", "jpg", "jpeg", "webp", "bmp", "heic", "heif", "tif", "tiff", "svg"), "image"),
    "gif": "gif",
    **dict.fromkeys(("mp4", "webm", "mov", "mkv", "avi", "m4v", "3gp"), "video"),
    **dict.fromkeys(("mp3", "ogg", "oga", "opus", "wav", "m4a", "flac", "aac", "amr"), "audio"),
    **dict.fromkeys(("vcf",), "contact"),
}

# Timestamps a chat can carry: from 1900 to 2200. Anything else is a broken or misread value.
EARLIEST_TS = -2208988800.0
LATEST_TS = 7258118400.0
# Epoch numbers in the wild are seconds, milliseconds, microseconds or nanoseconds; the magnitude
# tells them apart (a seconds value past 1e11 would be the year 5138).
_EPOCH_SCALES = ((1e11, 1.0), (1e14, 1e3), (1e17, 1e6), (1e20, 1e9))


@dataclass(slots=True)
class Message:
    """One chat message, normalised. `ts` is UTC epoch seconds (always a float); `order` keeps file
    order for ties; `msg_id` is the export's own id of the message (None where it has none), which
    tells a message read twice from overlapping exports; `attachment` is the kind of what an
    attachment-only message carried (its `content` is then empty until the placeholder is chosen)."""

    channel: str
    author_id: str
    username: str
    content: str
    ts: float
    order: int = 0
    is_bot: bool = False
    is_system: bool = False
    # Which reader produced it: the filters use each format's own mention syntax.
    format: str = "seed"
    msg_id: str | None = None
    attachment: str | None = None

    def sort_key(self) -> tuple[float, int]:
        return (self.ts, self.order)


@dataclass
class ReadOptions:
    """What readers need from the config, and where they report what they skip and warn about.

    `on_error`: `fail` raises at the first bad record (the default here: library callers are strict);
    `skip_messages` and `skip` remember a bad record in `errors` and go on (prepare passes the config's
    value; what happens to a whole bad file is the caller's business). `timezone` is the IANA zone of
    timestamps that carry no offset (None: UTC).
    """

    on_error: str = "fail"
    irc_channel: str | None = None
    max_message_chars: int = 2000
    timezone: str | None = None
    errors: list[InputError] = field(default_factory=list)
    warnings: list[InputError] = field(default_factory=list)

    def bad(self, error: InputError) -> None:
        """Report a bad record: raise under `fail`, remember and go on otherwise."""
        if self.on_error == "fail":
            raise error
        self.errors.append(error)

    def warn(self, warning: InputError) -> None:
        """Something the user should know that stops nothing (a log with no date anywhere)."""
        self.warnings.append(warning)

    @functools.cached_property
    def tz(self) -> dt.tzinfo:
        return zone(self.timezone)


def zone(name: str | None) -> dt.tzinfo:
    """The tzinfo of an IANA zone name (None or "UTC": UTC)."""
    if not name or name.upper() == "UTC":
        return dt.timezone.utc
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def attachment_kind(name: Any) -> str:
    """The kind of an attachment from its file name, URL or MIME type (`file` when it says nothing)."""
    if not isinstance(name, str) or not name:
        return "file"
    lowered = name.lower().split("?", 1)[0]
    for prefix, kind in (("image/gif", "gif"), ("image/", "image"), ("video/", "video"), ("audio/", "audio")):
        if lowered.startswith(prefix):
            return kind
    extension = lowered.rsplit(".", 1)[-1] if "." in lowered.rsplit("/", 1)[-1] else ""
    return _EXTENSION_KINDS.get(extension, "file")


def epoch_seconds(value: float, *, path: str, line: int | None, field: str | None) -> float:
    """An epoch number in seconds, milliseconds, microseconds or nanoseconds -> seconds, checked."""
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):
        number = math.inf
    if not math.isfinite(number):
        raise InputError(f"not a finite number: {str(value)[:40]}", path=path, line=line, field=field)
    for limit, scale in _EPOCH_SCALES:
        if abs(number) < limit:
            return checked_ts(number / scale, path=path, line=line, field=field)
    raise InputError(f"not an epoch time: {str(value)[:40]}", path=path, line=line, field=field)


def checked_ts(ts: float, *, path: str, line: int | None, field: str | None) -> float:
    """`ts` if it lies between 1900 and 2200, else the error that says so."""
    if not EARLIEST_TS <= ts < LATEST_TS:
        raise InputError(f"out of range (1900-2200): {ts!r}", path=path, line=line, field=field)
    return float(ts)


def parse_timestamp(
    value: Any, *, path: str, line: int | None, field: str = "timestamp", tz: dt.tzinfo | None = None
) -> float:
    """ISO 8601 (no offset: `tz`, default UTC), or epoch seconds/milliseconds/microseconds -> epoch seconds."""
    if isinstance(value, bool) or value is None:
        raise InputError(f"expected a timestamp, got {value!r}", path=path, line=line, field=field)
    if isinstance(value, (int, float)):
        return epoch_seconds(value, path=path, line=line, field=field)
    if not isinstance(value, str):
        raise InputError(f"expected a timestamp, got {type(value).__name__}", path=path, line=line, field=field)
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        return epoch_seconds(number, path=path, line=line, field=field)
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"not an ISO 8601 date or epoch number: {value[:60]!r}", path=path, line=line, field=field
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz or dt.timezone.utc)
    try:
        ts = parsed.timestamp()
    except (OverflowError, OSError, ValueError):
        raise InputError(f"out of range: {value[:60]!r}", path=path, line=line, field=field) from None
    return checked_ts(ts, path=path, line=line, field=field)


def naive_to_utc(moment: dt.datetime, tz: dt.tzinfo) -> float:
    """Epoch seconds of a wall-clock time in `tz` (an ambiguous or skipped hour resolves as zoneinfo does)."""
    return moment.replace(tzinfo=tz).timestamp()


def safe_text(text: str) -> str:
    """`text` as valid Unicode: a lone surrogate (JSON's `\\ud83d` of a cut emoji) becomes `?`, since
    nothing can write it as UTF-8 later."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def clean_content(text: str, max_chars: int) -> str:
    """Edge whitespace off, typed look-alikes of special tokens defused, over-long text cut: the
    chat contract's rule (fizzbot.chat.render.clean_text), which served contexts follow too."""
    return clean_text(text, max_chars)
