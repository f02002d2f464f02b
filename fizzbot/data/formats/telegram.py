"""Telegram Desktop exports (`result.json`): one chat `{"name", "type", "id", "messages": [...]}`, or a
whole account with the chats under `"chats": {"list": [...]}` (and `"left_chats": {"list": [...]}`).

A message: `id`, `type` (`message` or `service`), `date` (local time, no offset), `date_unixtime` (a
string of epoch seconds), `from`, `from_id` (`user123`, `channel123`), `text`, `text_entities`;
service messages name their `actor`/`actor_id` and `action` instead.

Traps, and what this reader does about them:

- `text` is a string for plain messages and a *list* of strings and `{"type", "text"}` pieces (links,
  bold, mentions) otherwise: the pieces are concatenated.
- `from` is null for deleted accounts: speakers are keyed on `from_id`; the username is `from`, else the id.
- Time: `date_unixtime` when present; else `date`, which carries no offset and is read as UTC (the
  exporting computer's time zone is not recorded anywhere).
- `service` messages (joins, pins, calls, title changes) are flagged `is_system`; Telegram does not
  mark bots, so `is_bot` stays false (`data.bot_usernames` can name them).
- Each chat is a channel named by its `name` (`telegram-<id>` when it has none, as deleted accounts
  and Saved Messages do); two chats of one name in an export are told apart by ` (<id>)`.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Iterator

from fizzbot.data.messages import InputError, Message, ReadOptions, clean_content, parse_timestamp

if TYPE_CHECKING:
    from fizzbot.data.formats import SourceUnit


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


def _timestamp(record: dict, path: str, prefix: str) -> float:
    if record.get("date_unixtime") is not None:
        value = record["date_unixtime"]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise InputError(f"expected epoch seconds, got {type(value).__name__}", path=path, field=prefix + "date_unixtime")
        try:
            return float(value)
        except ValueError:
            raise InputError(f"not epoch seconds: {value!r}", path=path, field=prefix + "date_unixtime") from None
    if "date" not in record:
        raise InputError("missing (and no date_unixtime)", path=path, field=prefix + "date")
    return parse_timestamp(record["date"], path=path, line=None, field=prefix + "date")


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
        for index, record in enumerate(messages):
            prefix = f"{chat_prefix}messages[{index}]."
            try:
                if not isinstance(record, dict):
                    raise InputError(f"expected an object, got {type(record).__name__}", path=label, field=prefix.rstrip("."))
                is_system = record.get("type", "message") == "service"
                # Service messages name their `actor`; ordinary ones `from`.
                id_key, name_key = ("actor_id", "actor") if is_system and "from_id" not in record else ("from_id", "from")
                author_id = record.get(id_key)
                name = record.get(name_key)
                if author_id is None and not (isinstance(name, str) and name.strip()):
                    raise InputError("missing (and no name to key on)", path=label, field=prefix + id_key)
                if author_id is not None and (isinstance(author_id, bool) or not isinstance(author_id, (str, int))):
                    raise InputError(f"expected an id, got {type(author_id).__name__}", path=label, field=prefix + id_key)
                username = name.strip() if isinstance(name, str) and name.strip() else str(author_id)
                ts = _timestamp(record, label, prefix)
                if "text" in record:
                    content = flatten_text(record["text"], label, prefix + "text")
                elif is_system:
                    content = ""
                else:
                    raise InputError("missing", path=label, field=prefix + "text")
            except InputError as error:
                opts.bad(error)
                continue
            if is_system and not content and isinstance(record.get("action"), str):
                content = record["action"]
            yield Message(
                channel=channel,
                author_id=str(author_id if author_id is not None else username),
                username=username,
                content=clean_content(content, opts.max_message_chars),
                ts=ts,
                is_system=is_system,
                format="telegram",
            )
