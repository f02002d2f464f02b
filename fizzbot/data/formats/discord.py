"""DiscordChatExporter (Tyrrrz/DiscordChatExporter) exports: JSON (`read_json`) and CSV (`read_csv`).

JSON: one file per channel or thread, `{"guild", "channel", "messages": [...]}`; a message has `id`,
`type`, `timestamp` (ISO 8601 with offset), `content`, `author` (`id`, `name`, `nickname`, `isBot`,
`roles`), `embeds`, `mentions`, ...
CSV: `AuthorID,Author,Date,Content,Attachments,Reactions`, one file per channel.

Traps, and what these readers do about them:

- System messages (joins, pins, thread starts, calls) carry English filler text ("Joined the server."):
  they are flagged `is_system` by `type` (anything but `Default` and `Reply`), never by content. The CSV
  has no type, so there (only there) the exporter's own filler sentences are recognised.
- Bots often post an empty `content` with the text in `embeds`: an empty message with embeds takes its
  content from them (title, description, fields).
- Speakers are keyed on `author.id`; the username is the `nickname` (the name at export time), else `name`.
- Mentions: the exporter writes `@Name` (kept as is), or with its markdown option off the raw forms:
  `<@123>`/`<@!123>` -> `@Name` from the message's `mentions` (else `@unknown`), `<#123>` -> `#name` when
  the id is this file's channel or its parent (else `#unknown-channel`), `<@&123>` -> `@role` named from
  the roles of the file's authors (else `@unknown-role`), custom emoji `<:name:id>`/`<a:name:id>` -> `:name:`.
- Channel names: `Guild/category/name [channel id]`, from the JSON's own header, so that the split files
  of one channel (`... [part 2].json`) agree and two channels or threads of the same name do not (the
  id is the exporter's own disambiguator: it names files `Guild - category - name [id].json`). For a
  thread the exporter's `category` is its parent channel. The CSV has no header: its channel is the file
  name without ` [part N]` and the extension.
- CSV fields span lines (read with the csv module); old exporter versions wrote locale dates with minute
  precision (`25-Dec-20 09:14 PM`, `12/25/2020 9:14 PM`, `25/12/2020 21:14`): they have no offset and are
  read as UTC. A slashed date is month-first with AM/PM (US) and day-first without, unless a field
  over 12 settles it.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from fizzbot.data.messages import InputError, Message, ReadOptions, clean_content, parse_timestamp

if TYPE_CHECKING:
    from fizzbot.data.formats import SourceUnit

ORDINARY_TYPES = frozenset({"Default", "Reply"})
CSV_HEADER = ("AuthorID", "Author", "Date", "Content", "Attachments", "Reactions")

_USER_MENTION_RE = re.compile(r"<@!?(\d+)>")
_CHANNEL_MENTION_RE = re.compile(r"<#(\d+)>")
_ROLE_MENTION_RE = re.compile(r"<@&(\d+)>")
_CUSTOM_EMOJI_RE = re.compile(r"<a?:(\w+):\d+>")
_PART_RE = re.compile(r"\s*\[part \d+\]$", re.IGNORECASE)
# The legacy `Name#1234` discriminator is not part of the name (the JSON keeps it in its own field).
_DISCRIMINATOR_RE = re.compile(r"#\d{4}$")
# The exporter's filler text for system messages (PlainTextMessageExtensions.GetFallbackContent): the
# CSV's only trace of a message's type.
_CSV_SYSTEM_RE = re.compile(
    r"(?:Added .+ to the group\.|Added a recipient\.|Removed .+ from the group\.|Removed a recipient\."
    r"|Left the group\.|Started a call that lasted [\d,.]+ minutes\.|Changed the channel name(?:: .*|\.)"
    r"|Changed the channel icon\.|Pinned a message\.|Started a thread\.|Joined the server\.)",
    re.DOTALL,
)
# Locale dates of old exporter versions, minute precision: `25-Dec-20 09:14 PM`, `12/25/2020 9:14 PM`.
_DASH_DATE_FORMATS = ("%d-%b-%y %I:%M %p", "%d-%b-%Y %I:%M %p", "%d-%b-%y %H:%M", "%d-%b-%Y %H:%M")
_SLASH_DATE_RE = re.compile(
    r"(\d{1,2})/(\d{1,2})/(\d{2}|\d{4})\s+(\d{1,2}):(\d\d)(?::(\d\d))?\s*([AaPp][Mm])?"
)


def _channel_key(header: dict, path: str) -> str:
    """`Guild/category/name [id]`: readable, and one string for every part file of a channel."""
    guild = header.get("guild")
    channel = header.get("channel")
    if not isinstance(channel, dict):
        raise InputError("missing or not an object", path=path, field="channel")
    name = channel.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InputError("missing or not a non-empty string", path=path, field="channel.name")
    parts = []
    if isinstance(guild, dict) and isinstance(guild.get("name"), str) and guild["name"].strip():
        parts.append(guild["name"].strip())
    category = channel.get("category")
    if isinstance(category, str) and category.strip():
        parts.append(category.strip())
    parts.append(name.strip())
    key = "/".join(parts)
    channel_id = channel.get("id")
    return f"{key} [{channel_id}]" if channel_id else key


def _display_name(user: dict) -> str | None:
    for key in ("nickname", "name"):
        value = user.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _known_roles(messages: list) -> dict[str, str]:
    """Role id -> name, from the roles the exporter lists on each author."""
    roles: dict[str, str] = {}
    for message in messages:
        author = message.get("author") if isinstance(message, dict) else None
        for role in (author.get("roles") or []) if isinstance(author, dict) else []:
            if isinstance(role, dict) and role.get("id") and isinstance(role.get("name"), str):
                roles[str(role["id"])] = role["name"]
    return roles


def _render_mentions(text: str, mentions: Any, channels: dict[str, str], roles: dict[str, str]) -> str:
    """Raw mention and emoji markup -> the readable forms the exporter writes by default."""
    if "<" not in text:
        return text
    users: dict[str, str] = {}
    if isinstance(mentions, list):
        for user in mentions:
            if isinstance(user, dict) and user.get("id") is not None:
                users[str(user["id"])] = _display_name(user) or "unknown"
    text = _USER_MENTION_RE.sub(lambda m: "@" + users.get(m.group(1), "unknown"), text)
    text = _ROLE_MENTION_RE.sub(lambda m: "@" + roles.get(m.group(1), "unknown-role"), text)
    text = _CHANNEL_MENTION_RE.sub(lambda m: "#" + channels.get(m.group(1), "unknown-channel"), text)
    return _CUSTOM_EMOJI_RE.sub(r":\1:", text)


def _embed_text(embeds: Any) -> str:
    """The readable text of a bot's embeds: title, description, and `name: value` of each field."""
    pieces = []
    for embed in embeds if isinstance(embeds, list) else []:
        if not isinstance(embed, dict):
            continue
        for key in ("title", "description"):
            value = embed.get(key)
            if isinstance(value, str) and value.strip():
                pieces.append(value.strip())
        for fld in embed.get("fields") or []:
            if isinstance(fld, dict):
                name, value = fld.get("name"), fld.get("value")
                line = ": ".join(v.strip() for v in (name, value) if isinstance(v, str) and v.strip())
                if line:
                    pieces.append(line)
    return "\n".join(pieces)


def read_json(unit: "SourceUnit", opts: ReadOptions) -> Iterator[Message]:
    from fizzbot.data.formats import load_json

    label = unit.path
    data = load_json(label)
    if not isinstance(data, dict):
        raise InputError("expected a DiscordChatExporter JSON object", path=label, line=1)
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise InputError("missing or not a list", path=label, field="messages")
    channel = _channel_key(data, label)
    header = data["channel"]
    # `<#id>` can only be named for the ids the file knows: its own channel and its parent.
    channels = {str(header.get("id")): header["name"].strip()}
    if header.get("categoryId") and isinstance(header.get("category"), str):
        channels[str(header["categoryId"])] = header["category"]
    roles = _known_roles(messages)

    for index, record in enumerate(messages):
        prefix = f"messages[{index}]"
        try:
            if not isinstance(record, dict):
                raise InputError(f"expected an object, got {type(record).__name__}", path=label, field=prefix)
            author = record.get("author")
            if not isinstance(author, dict):
                raise InputError("missing or not an object", path=label, field=prefix + ".author")
            author_id = author.get("id")
            if not isinstance(author_id, (str, int)) or isinstance(author_id, bool) or str(author_id) == "":
                raise InputError("missing or not an id", path=label, field=prefix + ".author.id")
            username = _display_name(author)
            if username is None:
                raise InputError("no nickname or name", path=label, field=prefix + ".author.name")
            if "timestamp" not in record:
                raise InputError("missing", path=label, field=prefix + ".timestamp")
            ts = parse_timestamp(record["timestamp"], path=label, line=None, field=prefix + ".timestamp")
            kind = record.get("type", "Default")
            if not isinstance(kind, str):
                raise InputError(f"expected a string, got {type(kind).__name__}", path=label, field=prefix + ".type")
            content = record.get("content")
            if content is None:
                raise InputError("missing", path=label, field=prefix + ".content")
            if not isinstance(content, str):
                raise InputError(f"expected a string, got {type(content).__name__}", path=label, field=prefix + ".content")
        except InputError as error:
            opts.bad(error)
            continue
        if not content.strip() and record.get("embeds"):
            content = _embed_text(record["embeds"])
        content = _render_mentions(content, record.get("mentions"), channels, roles)
        yield Message(
            channel=channel,
            author_id=str(author_id),
            username=username,
            content=clean_content(content, opts.max_message_chars),
            ts=ts,
            is_bot=bool(author.get("isBot", False)),
            is_system=kind not in ORDINARY_TYPES,
            format="discord",
        )


def parse_locale_date(text: str) -> float | None:
    """Epoch seconds of an old exporter's locale date (no offset: UTC), or None if it is not one."""
    text = text.strip()
    for fmt in _DASH_DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.timezone.utc).timestamp()
        except ValueError:
            pass
    m = _SLASH_DATE_RE.fullmatch(text)
    if m is None:
        return None
    first, second, year, hour, minute, sec, ampm = m.groups()
    first, second, hour = int(first), int(second), int(hour)
    year = int(year) + (2000 if len(year) == 2 else 0)
    # US locales write month first and a 12-hour clock; most others day first and a 24-hour clock.
    month_first = bool(ampm)
    if first > 12:
        month_first = False
    elif second > 12:
        month_first = True
    month, day = (first, second) if month_first else (second, first)
    if ampm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm.lower() == "pm" else 0)
    try:
        moment = dt.datetime(year, month, day, hour, int(minute), int(sec or 0), tzinfo=dt.timezone.utc)
    except ValueError:
        return None
    return moment.timestamp()


def _csv_timestamp(value: str, path: str, line: int) -> float:
    try:
        return parse_timestamp(value, path=path, line=line, field="Date")
    except InputError:
        ts = parse_locale_date(value)
        if ts is None:
            raise InputError(f"not an ISO 8601 or locale date: {value!r}", path=path, line=line, field="Date") from None
        return ts


def csv_channel(path: Path) -> str:
    """The channel of a CSV export: its file name without the extension and ` [part N]`."""
    return _PART_RE.sub("", path.stem)


def read_csv(unit: "SourceUnit", opts: ReadOptions) -> Iterator[Message]:
    from fizzbot.data.formats import read_text

    path = Path(unit.path)
    label = str(path)
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        header = next(reader)
    except csv.Error as exc:
        raise InputError(f"malformed CSV: {exc}", path=label, line=1) from None
    missing = [name for name in CSV_HEADER[:4] if name not in header]
    if missing:
        raise InputError(
            f"not a DiscordChatExporter CSV: header lacks {', '.join(missing)} (expected {','.join(CSV_HEADER)})",
            path=label,
            line=1,
        )
    col = {name: header.index(name) for name in CSV_HEADER[:4]}
    width = max(col.values()) + 1
    channel = csv_channel(path)
    start = reader.line_num + 1  # a record may span lines: it starts on the line after the last one
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise InputError(f"malformed CSV: {exc}", path=label, line=start) from None
        line, start = start, reader.line_num + 1
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        try:
            if len(row) < width:
                raise InputError(f"expected {len(header)} fields, got {len(row)}", path=label, line=line)
            author_id = row[col["AuthorID"]].strip()
            if not author_id:
                raise InputError("empty", path=label, line=line, field="AuthorID")
            username = _DISCRIMINATOR_RE.sub("", row[col["Author"]].strip()) or author_id
            ts = _csv_timestamp(row[col["Date"]], label, line)
        except InputError as error:
            opts.bad(error)
            continue
        content = row[col["Content"]]
        yield Message(
            channel=channel,
            author_id=author_id,
            username=username,
            # The CSV keeps no mention lists: raw mentions can only become `@unknown` and the like.
            content=clean_content(_render_mentions(content, None, {}, {}), opts.max_message_chars),
            ts=ts,
            is_system=bool(_CSV_SYSTEM_RE.fullmatch(content.strip())),
            format="discord_csv",
        )
