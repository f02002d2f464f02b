"""DiscordChatExporter (Tyrrrz/DiscordChatExporter) exports: JSON (`read_json`) and CSV (`read_csv`), as
every version of the exporter wrote them.

JSON: one file per channel, thread or forum post, `{"guild", "channel", "dateRange", "exportedAt",
"messages": [...], "messageCount"}`; a message has `id`, `type`, `timestamp` (ISO 8601 with offset),
`content`, `author` (`id`, `name`, `discriminator`, `nickname` (newer), `isBot`, `roles` (newer)),
`attachments`, `embeds`, `stickers`, `mentions`, `reference` (replies), ...
CSV: one file per channel. Current versions: `AuthorID,Author,Date,Content,Attachments,Reactions`;
versions 2.x wrote `Author;Date;Content;Attachments;` and then `AuthorID;Author;Date;Content;
Attachments;Reactions;` (semicolons, a trailing one), with the author as `name#1234`.

Traps, and what these readers do about them:

- System messages (joins, pins, thread starts, calls, boosts) carry English filler text ("Joined the
  server."): they are flagged `is_system` by `type`, never by content. The exporter writes the type's
  enum name, or its number for kinds its enum lacks (`"20"`, a slash command's reply): names and numbers
  both are read; a type this reader does not know is a skipped record (`unknown Discord type '<x>'`).
  The CSV has no type, so there (only there) the exporter's own filler sentences are recognised.
- Bots often post an empty `content` with the text in `embeds`: an empty message with embeds takes its
  content from them (title, description, fields). A message with nothing but attachments, stickers or
  an image embed keeps the kind of the first (`image`, `video`, `sticker`, `file`, ...) for its placeholder.
- Speakers are keyed on `author.id`; the username is the `nickname` (the name at export time), else `name`.
  The CSV of 2.x has no AuthorID: there the author as written (`name#1234`) is the key.
- Mentions: the exporter writes `@Name` (kept as is), or with its markdown option off the raw forms:
  `<@123>`/`<@!123>` -> `@Name` from the message's `mentions` (else `@unknown`), `<#123>` -> `#name` when
  the id is this file's channel or its parent (else `#unknown-channel`), `<@&123>` -> `@role` named from
  the roles of the authors read so far (else `@unknown-role`), custom emoji `<:name:id>` -> `:name:`.
- Channel names: `Guild/category/name [channel id]`, from the JSON's own header, so that the split files
  of one channel (`... [part 2].json`) agree and two channels or threads of the same name do not (the
  id is the exporter's own disambiguator: it names files `Guild - category - name [id].json`). For a
  thread or a forum post the exporter's `category` is its parent channel (or forum). The CSV has no
  header: its channel is the file name without ` [part N]` and the extension.
- Size: an export of one busy channel runs to gigabytes. A file over `STREAM_ABOVE_BYTES` is streamed
  with ijson (its header first, then one message at a time); smaller ones are parsed whole, which
  locates a syntax error by line.
- CSV fields span lines (read with the csv module); old exporter versions wrote locale dates with minute
  precision (`25-Dec-20 09:14 PM`, `12/25/2020 9:14 PM`, `25/12/2020 21:14`, `25.12.2020 21:14`): they
  have no offset and are read in `data.timezone` (default UTC). A slashed date is month-first with AM/PM
  (US) and day-first without, unless a field over 12 settles it.
- The message `id` is kept: the same message in two overlapping exports is read once.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from fizzbot.data.messages import (
    InputError,
    Message,
    ReadOptions,
    attachment_kind,
    clean_content,
    naive_to_utc,
    parse_timestamp,
)

if TYPE_CHECKING:
    from fizzbot.data.formats import SourceUnit

# Files larger than this are streamed (ijson) rather than parsed whole.
STREAM_ABOVE_BYTES = 64 << 20
# A message of a megabyte and more is still one CSV field (the csv module stops at 128 KiB by default).
csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))

# The exporter writes MessageKind names; kinds missing from its enum come out as their numbers.
ORDINARY_TYPES = frozenset({"Default", "Reply", "ChatInputCommand", "ApplicationCommand", "ContextMenuCommand"})
ORDINARY_TYPE_NUMBERS = frozenset({0, 19, 20, 23})
SYSTEM_TYPES = frozenset({
    "RecipientAdd", "RecipientRemove", "Call", "ChannelNameChange", "ChannelIconChange", "ChannelPinnedMessage",
    "GuildMemberJoin", "UserPremiumGuildSubscription", "UserPremiumGuildSubscriptionTier1",
    "UserPremiumGuildSubscriptionTier2", "UserPremiumGuildSubscriptionTier3", "ChannelFollowAdd",
    "GuildDiscoveryDisqualified", "GuildDiscoveryRequalified", "GuildDiscoveryGracePeriodInitialWarning",
    "GuildDiscoveryGracePeriodFinalWarning", "ThreadCreated", "ThreadStarterMessage", "GuildInviteReminder",
    "AutoModerationAction", "RoleSubscriptionPurchase", "InteractionPremiumUpsell", "StageStart", "StageEnd",
    "StageSpeaker", "StageRaiseHand", "StageTopic", "GuildApplicationPremiumSubscription",
    "GuildIncidentAlertModeEnabled", "GuildIncidentAlertModeDisabled", "GuildIncidentReportRaid",
    "GuildIncidentReportFalseAlarm", "PurchaseNotification", "PollResult",
})
CSV_HEADER = ("AuthorID", "Author", "Date", "Content", "Attachments", "Reactions")
_CSV_REQUIRED = ("Author", "Date", "Content")

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
    r"(\d{1,2})[/.](\d{1,2})[/.](\d{2}|\d{4}),?\s+(\d{1,2}):(\d\d)(?::(\d\d))?\s*([AaPp][Mm])?"
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
    if isinstance(channel_id, (str, int)) and not isinstance(channel_id, bool) and str(channel_id):
        return f"{key} [{channel_id}]"
    return key


def _display_name(user: dict) -> str | None:
    for key in ("nickname", "name"):
        value = user.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _learn_roles(author: dict, roles: dict[str, str]) -> None:
    """Role id -> name, from the roles the exporter lists on each author (newer versions)."""
    listed = author.get("roles")
    for role in listed if isinstance(listed, list) else []:
        if isinstance(role, dict) and isinstance(role.get("id"), (str, int)) and isinstance(role.get("name"), str):
            roles[str(role["id"])] = role["name"]


def _render_mentions(text: str, mentions: Any, channels: dict[str, str], roles: dict[str, str]) -> str:
    """Raw mention and emoji markup -> the readable forms the exporter writes by default."""
    if "<" not in text:
        return text
    users: dict[str, str] = {}
    if isinstance(mentions, list):
        for user in mentions:
            if isinstance(user, dict) and isinstance(user.get("id"), (str, int)):
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
        fields = embed.get("fields")
        for fld in fields if isinstance(fields, list) else []:
            if isinstance(fld, dict):
                name, value = fld.get("name"), fld.get("value")
                line = ": ".join(v.strip() for v in (name, value) if isinstance(v, str) and v.strip())
                if line:
                    pieces.append(line)
    return "\n".join(pieces)


def _attachment_of(record: dict) -> str | None:
    """The kind of what an otherwise empty message carried: its first attachment, sticker or media embed."""
    attachments = record.get("attachments")
    for item in attachments if isinstance(attachments, list) else []:
        if isinstance(item, dict):
            return attachment_kind(item.get("fileName") or item.get("url"))
    stickers = record.get("stickers")
    if isinstance(stickers, list) and stickers:
        return "sticker"
    embeds = record.get("embeds")
    for embed in embeds if isinstance(embeds, list) else []:
        if isinstance(embed, dict):
            for key, kind in (("video", "video"), ("image", "image"), ("thumbnail", "image")):
                if isinstance(embed.get(key), dict):
                    return "gif" if isinstance(embed.get("url"), str) and "tenor" in embed["url"] else kind
    return None


def _type_class(kind: Any, path: str, field: str) -> bool:
    """Whether a message type is a system event (True) or speech (False); an unknown one is an error."""
    if isinstance(kind, int) and not isinstance(kind, bool):
        return kind not in ORDINARY_TYPE_NUMBERS
    if not isinstance(kind, str):
        raise InputError(f"expected a string, got {type(kind).__name__}", path=path, field=field)
    if kind in ORDINARY_TYPES:
        return False
    if kind in SYSTEM_TYPES:
        return True
    if kind.isdigit() and len(kind) < 6:
        return int(kind) not in ORDINARY_TYPE_NUMBERS
    raise InputError(f"unknown message type {kind[:40]!r}", path=path, field=field, kind=f"unknown Discord type {kind[:40]!r}")


# --- JSON ------------------------------------------------------------------------------------------


def _whole_document(path: str) -> tuple[dict, Iterator[tuple[int, Any]]]:
    from fizzbot.data.formats import load_json

    data = load_json(path)
    if not isinstance(data, dict):
        raise InputError("expected a DiscordChatExporter JSON object", path=path, line=1)
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise InputError("missing or not a list", path=path, field="messages")
    return data, enumerate(messages)


def _open_json(path: str):
    """The file, past a UTF-8 byte-order mark (ijson does not skip one)."""
    fh = open(path, "rb")
    if fh.read(3) != b"\xef\xbb\xbf":
        fh.seek(0)
    return fh


def _json_error(exc: Exception) -> str:
    text = exc.args[0] if exc.args else str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text).strip().split("\n", 1)[0]


def _streamed_document(path: str) -> tuple[dict, Iterator[tuple[int, Any]]]:
    """The header (every top-level key before `messages`), then the messages one at a time."""
    import ijson

    header: dict = {}
    key = "(the document's start)"  # where a syntax error is: the top-level key being read
    with _open_json(path) as fh:
        events = ijson.parse(fh, use_float=True)
        try:
            prefix, event, _ = next(events)
            if event != "start_map":
                raise InputError("expected a DiscordChatExporter JSON object", path=path, line=1)
            for prefix, event, value in events:
                if prefix != "" or event != "map_key":
                    continue
                key = value
                if value == "messages":
                    break
                header[value] = _build_value(events)
            else:
                raise InputError("missing or not a list", path=path, field="messages")
        except StopIteration:
            raise InputError("malformed JSON: the document ends early", path=path, field=key) from None
        except ijson.JSONError as exc:
            raise InputError(f"malformed JSON: {_json_error(exc)}", path=path, field=key) from None
        except UnicodeDecodeError as exc:
            raise InputError(f"not UTF-8: {exc.reason}", path=path, field=key) from None
    return header, _streamed_messages(path)


def _build_value(events) -> Any:
    import ijson

    builder = ijson.ObjectBuilder()
    depth = 0
    for _, event, value in events:
        builder.event(event, value)
        if event in ("start_map", "start_array"):
            depth += 1
        elif event in ("end_map", "end_array"):
            depth -= 1
        if depth == 0:
            return builder.value
    raise StopIteration


def _streamed_messages(path: str) -> Iterator[tuple[int, Any]]:
    import ijson

    index = 0
    with _open_json(path) as fh:
        try:
            for record in ijson.items(fh, "messages.item", use_float=True):
                yield index, record
                index += 1
        except ijson.JSONError as exc:
            raise InputError(f"malformed JSON: {_json_error(exc)}", path=path, field=f"messages[{index}]") from None
        except UnicodeDecodeError as exc:
            raise InputError(f"not UTF-8: {exc.reason}", path=path, field=f"messages[{index}]") from None


def read_json(unit: "SourceUnit", opts: ReadOptions) -> Iterator[Message]:
    label = unit.path
    try:
        size = os.path.getsize(label)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=label) from None
    header, messages = _whole_document(label) if size <= STREAM_ABOVE_BYTES else _streamed_document(label)
    channel = _channel_key(header, label)
    about = header["channel"]
    # `<#id>` can only be named for the ids the file knows: its own channel and its parent.
    channels = {str(about.get("id")): about["name"].strip()}
    if isinstance(about.get("categoryId"), (str, int)) and isinstance(about.get("category"), str):
        channels[str(about["categoryId"])] = about["category"]
    roles: dict[str, str] = {}

    for index, record in messages:
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
            ts = parse_timestamp(record["timestamp"], path=label, line=None, field=prefix + ".timestamp", tz=opts.tz)
            is_system = _type_class(record.get("type", "Default"), label, prefix + ".type")
            content = record.get("content")
            if content is None:
                raise InputError("missing", path=label, field=prefix + ".content")
            if not isinstance(content, str):
                raise InputError(f"expected a string, got {type(content).__name__}", path=label, field=prefix + ".content")
            msg_id = record.get("id")
            msg_id = str(msg_id) if isinstance(msg_id, (str, int)) and not isinstance(msg_id, bool) else None
        except InputError as error:
            opts.bad(error)
            continue
        _learn_roles(author, roles)
        attachment = None
        if not content.strip():
            content = _embed_text(record.get("embeds"))
            if not content.strip():
                attachment = _attachment_of(record)
        content = _render_mentions(content, record.get("mentions"), channels, roles)
        yield Message(
            channel=channel,
            author_id=str(author_id),
            username=username,
            content=clean_content(content, opts.max_message_chars),
            ts=ts,
            is_bot=author.get("isBot") is True,
            is_system=is_system,
            format="discord",
            msg_id=msg_id,
            attachment=attachment,
        )


# --- CSV -------------------------------------------------------------------------------------------


def parse_locale_date(text: str, tz: dt.tzinfo | None = None) -> float | None:
    """Epoch seconds of an old exporter's locale date (no offset: `tz`, default UTC), or None if it is not one."""
    moment = _locale_datetime(text.strip())
    if moment is None:
        return None
    return naive_to_utc(moment, tz or dt.timezone.utc)


def _locale_datetime(text: str) -> dt.datetime | None:
    for fmt in _DASH_DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt)
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
        return dt.datetime(year, month, day, hour, int(minute), int(sec or 0))
    except ValueError:
        return None


def _csv_timestamp(value: str, path: str, line: int, tz: dt.tzinfo) -> float:
    try:
        return parse_timestamp(value, path=path, line=line, field="Date", tz=tz)
    except InputError:
        ts = parse_locale_date(value[:80], tz)
        if ts is None:
            raise InputError(f"not an ISO 8601 or locale date: {value[:60]!r}", path=path, line=line, field="Date") from None
        return ts


def csv_channel(path: Path) -> str:
    """The channel of a CSV export: its file name without the extension and ` [part N]`."""
    return _PART_RE.sub("", path.stem)


def _csv_dialect(first_line: str) -> str:
    """The delimiter of the header: `;` in the 2.x exporters, `,` since."""
    return ";" if first_line.count(";") > first_line.count(",") else ","


def read_csv(unit: "SourceUnit", opts: ReadOptions) -> Iterator[Message]:
    from fizzbot.data.formats import read_text

    path = Path(unit.path)
    label = str(path)
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_csv_dialect(text.split("\n", 1)[0]))
    try:
        header = [name.strip() for name in next(reader)]
    except (csv.Error, StopIteration) as exc:
        raise InputError(f"malformed CSV: {exc}", path=label, line=1) from None
    missing = [name for name in _CSV_REQUIRED if name not in header]
    if missing:
        raise InputError(
            f"not a DiscordChatExporter CSV: header lacks {', '.join(missing)} (expected {','.join(CSV_HEADER)})",
            path=label,
            line=1,
        )
    col = {name: header.index(name) for name in CSV_HEADER if name in header}
    width = max(col[name] for name in _CSV_REQUIRED) + 1
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
                raise InputError(f"expected {len(header)} fields, got {len(row)}", path=label, line=line,
                                 kind="too few fields")
            written = row[col["Author"]].strip()
            author_id = row[col["AuthorID"]].strip() if "AuthorID" in col and len(row) > col["AuthorID"] else written
            if not author_id:
                raise InputError("empty", path=label, line=line, field="AuthorID" if "AuthorID" in col else "Author")
            username = _DISCRIMINATOR_RE.sub("", written) or author_id
            ts = _csv_timestamp(row[col["Date"]], label, line, opts.tz)
        except InputError as error:
            opts.bad(error)
            continue
        content = row[col["Content"]]
        attachment = None
        if not content.strip() and "Attachments" in col and len(row) > col["Attachments"] and row[col["Attachments"]].strip():
            attachment = attachment_kind(row[col["Attachments"]].split(",")[0].strip())
        yield Message(
            channel=channel,
            author_id=author_id,
            username=username,
            # The CSV keeps no mention lists: raw mentions can only become `@unknown` and the like.
            content=clean_content(_render_mentions(content, None, {}, {}), opts.max_message_chars),
            ts=ts,
            is_system=bool(_CSV_SYSTEM_RE.fullmatch(content.strip())),
            format="discord_csv",
            attachment=attachment,
        )
