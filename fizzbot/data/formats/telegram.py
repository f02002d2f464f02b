"""Telegram Desktop exports (`result.json`): one chat `{"name", "type", "id", "messages": [...]}`, or a
whole account with the chats under `"chats": {"list": [...]}` (and `"left_chats": {"list": [...]}`).

A message: `id`, `type` (`message` or `service`), `date` (local time, no offset), `date_unixtime` (a
string of epoch seconds), `from`, `from_id` (`user123`, `channel123`), `text`, `text_entities`;
service messages name their `actor`/`actor_id` and `action` instead.

Traps, and what this reader does about them:

- `text` is a string for plain messages and a *list* of strings and `{"type", "text"}` pieces (links,
  bold, mentions) otherwise: the pieces are concatenated.
- `from` is null for deleted accounts: speakers are keyed on `from_id`; the username is `from`, else the id.
- Time: `date_unixtime` when present; else `date`, which carries no offset and is read in
  `data.timezone` (default UTC: the exporting computer's time zone is not recorded anywhere).
- `service` messages (joins, pins, calls, title changes, topics created) are flagged `is_system`;
  Telegram does not mark bots, so `is_bot` stays false (`data.bot_usernames` can name them). A
  `type` other than `message` and `service` is a skipped record (`unknown Telegram type '<x>'`).
- Forum topics: a topic is created by a `topic_created` service message whose id is the topic's; a
  message in the topic replies to it, or to a message in it. Each topic is a channel of its own,
  `<chat>/<topic title>`; messages outside every topic stay in the chat's channel (its General topic).
- Forwarded messages (`forwarded_from`) are someone else's words: the forwarder keeps the turn, as
  the `forwarded` placeholder. Media without a caption (photos, stickers, voice and video messages,
  files, polls, locations, contacts) are attachment-only messages with their kind's placeholder.
- The message `id` is kept: the same message in two overlapping exports is read once.
- Each chat is a channel named by its `name` (`telegram-<id>` when it has none, as deleted accounts
  and Saved Messages do); two chats of one name in an export are told apart by ` (<id>)`.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Iterator

from fizzbot.data.messages import (
    InputError,
    Message,
    ReadOptions,
    attachment_kind,
    clean_content,
    epoch_seconds,
    parse_timestamp,
)

if TYPE_CHECKING:
    from fizzbot.data.formats import SourceUnit

_MEDIA_KINDS = {
    "sticker": "sticker", "animation": "gif", "video_file": "video", "video_message": "video",
    "voice_message": "audio", "audio_file": "audio",
}


def _chats(data: dict, path: str) -> list[tuple[str, dict]]:
    """(field prefix, chat) of every chat in a single-chat or whole-account export."""
    if "messages" in data:
        return [("", data)]
    found = []
    for section in ("chats", "left_chats"):
        if section not in data:
            continue
        listing = data[section].get("list") if isinstance(data[section], dict) else None
        if not isinstance(listing, list):
            raise InputError("expected an object with a `list` of chats", path=path, field=section)
        for index, chat in enumerate(listing):
            if not isinstance(chat, dict):
                raise InputError(f"expected an object, got {type(chat).__name__}", path=path, field=f"{section}.list[{index}]")
            found.append((f"{section}.list[{index}].", chat))
    if not found and "chats" not in data:
        raise InputError("neither `messages` (one chat) nor `chats.list` (an account export)", path=path, field="messages")
    return found


def _channel_names(chats: list[tuple[str, dict]]) -> list[str]:
    names = []
    for _, chat in chats:
        name = chat.get("name")
        names.append(name.strip() if isinstance(name, str) and name.strip() else f"telegram-{chat.get('id')}")
    repeated = {name for name, count in Counter(names).items() if count > 1}
    return [f"{name} ({chat.get('id')})" if name in repeated else name for name, (_, chat) in zip(names, chats)]


def flatten_text(text: Any, path: str, field: str) -> str:
    """`text` as one string: a string, or a list of strings and `{"type", "text"}` pieces."""
    if isinstance(text, str):
        return text
    if not isinstance(text, list):
        raise InputError(f"expected a string or a list, got {type(text).__name__}", path=path, field=field)
    pieces = []
    for index, piece in enumerate(text):
        if isinstance(piece, str):
            pieces.append(piece)
        elif isinstance(piece, dict) and isinstance(piece.get("text"), str):
            pieces.append(piece["text"])
        else:
            raise InputError("expected a string or an object with a string `text`", path=path, field=f"{field}[{index}]")
    return "".join(pieces)


def _timestamp(record: dict, path: str, prefix: str, opts: ReadOptions) -> float:
    if record.get("date_unixtime") is not None:
        value = record["date_unixtime"]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise InputError(f"expected epoch seconds, got {type(value).__name__}", path=path, field=prefix + "date_unixtime")
        try:
            number = float(value)
        except (ValueError, OverflowError):
            raise InputError(f"not epoch seconds: {str(value)[:40]!r}", path=path, field=prefix + "date_unixtime") from None
        return epoch_seconds(number, path=path, line=None, field=prefix + "date_unixtime")
    if "date" not in record:
        raise InputError("missing (and no date_unixtime)", path=path, field=prefix + "date")
    return parse_timestamp(record["date"], path=path, line=None, field=prefix + "date", tz=opts.tz)


def _media_kind(record: dict) -> str | None:
    """The kind of what a message without words carried (photo, sticker, voice, file, poll, ...)."""
    if record.get("photo") is not None:
        return "image"
    media = record.get("media_type")
    if isinstance(media, str) and media in _MEDIA_KINDS:
        return _MEDIA_KINDS[media]
    for key, kind in (("poll", "poll"), ("location_information", "location"), ("contact_information", "contact"),
                      ("contact_vcard", "contact"), ("place_name", "location")):
        if record.get(key) is not None:
            return kind
    if record.get("file") is not None or isinstance(media, str):
        return attachment_kind(record.get("mime_type") or record.get("file_name") or record.get("file"))
    return None


def _topics(messages: list) -> dict[int, str]:
    """Topic id -> title of a forum chat: its `topic_created` service messages (ids are message ids)."""
    topics = {}
    for record in messages:
        if isinstance(record, dict) and record.get("action") == "topic_created" and isinstance(record.get("id"), int):
            title = record.get("title")
            topics[record["id"]] = title.strip() if isinstance(title, str) and title.strip() else f"topic {record['id']}"
    return topics


def read(unit: "SourceUnit", opts: ReadOptions) -> Iterator[Message]:
    from fizzbot.data.formats import load_json

    label = unit.path
    data = load_json(label)
    if not isinstance(data, dict):
        raise InputError("expected a Telegram export object", path=label, line=1)
    chats = _chats(data, label)
    for (chat_prefix, chat), channel in zip(chats, _channel_names(chats)):
        messages = chat.get("messages")
        if not isinstance(messages, list):
            opts.bad(InputError("missing or not a list", path=label, field=chat_prefix + "messages"))
            continue
        topics = _topics(messages)
        topic_of: dict[int, int] = {}  # message id -> topic id, through the chain of replies
        for index, record in enumerate(messages):
            prefix = f"{chat_prefix}messages[{index}]."
            try:
                if not isinstance(record, dict):
                    raise InputError(f"expected an object, got {type(record).__name__}", path=label, field=prefix.rstrip("."))
                kind = record.get("type", "message")
                if kind not in ("message", "service"):
                    raise InputError(f"unknown message type {str(kind)[:40]!r}", path=label, field=prefix + "type",
                                     kind=f"unknown Telegram type {str(kind)[:40]!r}")
                is_system = kind == "service"
                # Service messages name their `actor`; ordinary ones `from`.
                id_key, name_key = ("actor_id", "actor") if is_system and "from_id" not in record else ("from_id", "from")
                author_id = record.get(id_key)
                name = record.get(name_key)
                if author_id is None and not (isinstance(name, str) and name.strip()):
                    if not is_system:
                        raise InputError("missing (and no name to key on)", path=label, field=prefix + id_key)
                    author_id = "telegram"  # a service message of the chat itself (a topic created, a call)
                if isinstance(author_id, bool) or not isinstance(author_id, (str, int)):
                    raise InputError(f"expected an id, got {type(author_id).__name__}", path=label, field=prefix + id_key)
                username = name.strip() if isinstance(name, str) and name.strip() else str(author_id)
                ts = _timestamp(record, label, prefix, opts)
                if "text" in record:
                    content = flatten_text(record["text"], label, prefix + "text")
                elif is_system:
                    content = ""
                else:
                    raise InputError("missing", path=label, field=prefix + "text")
            except InputError as error:
                opts.bad(error)
                continue
            msg_id = record.get("id") if isinstance(record.get("id"), int) and not isinstance(record.get("id"), bool) else None
            reply_to = record.get("reply_to_message_id")
            topic = None
            if topics:
                topic = topic_of.get(reply_to, reply_to if reply_to in topics else None) if isinstance(reply_to, int) else None
                if msg_id is not None:
                    topic_of[msg_id] = msg_id if msg_id in topics else topic
            if is_system and not content and isinstance(record.get("action"), str):
                content = record["action"]
            attachment = None
            if not is_system and record.get("forwarded_from") is not None:
                content, attachment = "", "forwarded"  # someone else's words: the turn is kept, not the text
            elif not is_system and not content.strip():
                attachment = _media_kind(record)
            yield Message(
                channel=f"{channel}/{topics[topic]}" if topic is not None else channel,
                author_id=str(author_id),
                username=username,
                content=clean_content(content, opts.max_message_chars),
                ts=ts,
                is_system=is_system,
                format="telegram",
                msg_id=None if msg_id is None else str(msg_id),
                attachment=attachment,
            )
