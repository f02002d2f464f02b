"""Matrix room exports: Element's "Export chat" as JSON, `{"room_name", "room_creator", "topic",
"export_date", "exported_by", "messages": [...]}`, where each message is the room event as the
server sent it (decrypted, for an encrypted room); a bare JSON array of events, or a `{"chunk": [...]}`
page of the client API, reads the same.

An event: `type` (`m.room.message`, `m.sticker`, state events such as `m.room.member`, ...), `sender`
(`@alice:example.org`), `origin_server_ts` (epoch milliseconds), `event_id`, `content` (`msgtype`,
`body`, `m.relates_to`, ...), `unsigned`.

Traps, and what this reader does about them:

- State events (joins, names, topics, power levels: anything with a `state_key`), reactions,
  redactions and calls are not speech: flagged `is_system`. An event type or `msgtype` this reader
  does not know is a skipped record (`unknown Matrix type '<x>'`), as is an event still encrypted.
- Names: the room's `m.room.member` events give display names (the latest wins); else the localpart
  of the user id (`@alice:example.org` -> `alice`). Speakers are keyed on the user id.
- Replies quote their parent in `body` (`> <@bob:example.org> the parent` then a blank line): the
  quote is removed. Edits come as events with `m.relates_to.rel_type: m.replace`: the original
  message takes the last edit's `m.new_content`, and the edit event itself counts as a system event.
  A redacted message (empty `content`) is a system event.
- `m.emote` is rendered `/me text`; `m.notice` is a bot's; `m.image`, `m.video`, `m.audio`, `m.file`,
  `m.location` and stickers are attachment-only messages (a caption, where the body is not just the
  file name, is kept as the message).
- Threads (`rel_type: m.thread`): a thread is its own channel, `<room>/thread-<root event id>`, and its
  root is read into it first, as Slack threads are.
- The channel is `room_name`, else the room id, else the file name. `event_id` is kept: the same
  event in two overlapping exports is read once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from fizzbot.data.messages import InputError, Message, ReadOptions, attachment_kind, clean_content, epoch_seconds

if TYPE_CHECKING:
    from fizzbot.data.formats import SourceUnit

FORMAT = "matrix"
TEXT_TYPES = frozenset({"m.text", "m.notice", "m.emote"})
MEDIA_TYPES = {"m.image": "image", "m.video": "video", "m.audio": "audio", "m.file": "file", "m.location": "location"}
# Events that are not speech (besides every state event).
SYSTEM_TYPES = frozenset({
    "m.reaction", "m.room.redaction", "m.call.invite", "m.call.answer", "m.call.hangup", "m.call.candidates",
    "m.call.reject", "m.call.select_answer", "m.call.negotiate", "m.poll.start", "m.poll.response", "m.poll.end",
    "org.matrix.msc3381.poll.start", "org.matrix.msc3381.poll.response", "org.matrix.msc3381.poll.end",
    "m.room.member", "m.room.create", "m.room.name", "m.room.topic", "m.room.avatar", "m.room.power_levels",
    "m.room.join_rules", "m.room.history_visibility", "m.room.guest_access", "m.room.encryption",
    "m.room.pinned_events", "m.room.canonical_alias", "m.room.server_acl", "m.room.tombstone",
    "m.room.third_party_invite", "m.space.child", "m.space.parent", "im.vector.modular.widgets",
    "m.key.verification.request", "m.key.verification.start", "m.key.verification.done",
})


def _events(data: Any, path: str) -> tuple[str | None, list]:
    """(room name, events) of an Element export, a bare list of events, or a client API page."""
    if isinstance(data, list):
        return None, data
    if not isinstance(data, dict):
        raise InputError("expected a Matrix export object or a list of events", path=path, line=1)
    for key in ("messages", "chunk", "events"):
        if key in data:
            events = data[key]
            if not isinstance(events, list):
                raise InputError("expected a list of events", path=path, field=key)
            name = data.get("room_name")
            return (name.strip() if isinstance(name, str) and name.strip() else None), events
    raise InputError("no `messages` (an Element export) or `chunk` of events", path=path, field="messages")


def strip_reply_fallback(body: str) -> str:
    """A reply's body without the quoted parent (`> <@bob:server> ...` lines and the blank line after)."""
    lines = body.split("\n")
    index = 0
    while index < len(lines) and lines[index].startswith(">"):
        index += 1
    if index < len(lines) and not lines[index].strip():
        index += 1
    return "\n".join(lines[index:])


def _relation(content: dict) -> tuple[str | None, str | None, bool]:
    """(rel_type, related event id, is a reply) of an event's `m.relates_to`."""
    rel = content.get("m.relates_to")
    if not isinstance(rel, dict):
        return None, None, False
    rel_type = rel.get("rel_type") if isinstance(rel.get("rel_type"), str) else None
    event_id = rel.get("event_id") if isinstance(rel.get("event_id"), str) else None
    return rel_type, event_id, isinstance(rel.get("m.in_reply_to"), dict)


def _first_pass(events: list) -> tuple[dict[str, str], dict[str, dict], set[str]]:
    """Display names, the last edit of each edited event, and the roots of threads."""
    names: dict[str, str] = {}
    edits: dict[str, tuple[float, dict]] = {}
    roots: set[str] = set()
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("content"), dict):
            continue
        content = event["content"]
        if event.get("type") == "m.room.member" and isinstance(event.get("state_key"), str):
            name = content.get("displayname")
            if isinstance(name, str) and name.strip():
                names[event["state_key"]] = name.strip()
        rel_type, target, _ = _relation(content)
        if rel_type == "m.replace" and target and isinstance(content.get("m.new_content"), dict):
            ts = event.get("origin_server_ts")
            ts = ts if isinstance(ts, (int, float)) and not isinstance(ts, bool) and abs(ts) < 1e20 else 0
            if target not in edits or ts >= edits[target][0]:
                edits[target] = (ts, content["m.new_content"])
        elif rel_type == "m.thread" and target:
            roots.add(target)
    return names, {target: new for target, (_, new) in edits.items()}, roots


def read(unit: "SourceUnit", opts: ReadOptions) -> Iterator[Message]:
    from fizzbot.data.formats import load_json

    label = unit.path
    room_name, events = _events(load_json(label), label)
    names, edits, roots = _first_pass(events)
    channel = room_name
    if channel is None:
        room_ids = (e.get("room_id") for e in events if isinstance(e, dict) and isinstance(e.get("room_id"), str))
        channel = next(room_ids, None) or Path(label).stem

    for index, event in enumerate(events):
        prefix = f"messages[{index}]"
        try:
            if not isinstance(event, dict):
                raise InputError(f"expected an object, got {type(event).__name__}", path=label, field=prefix)
            kind = event.get("type")
            if not isinstance(kind, str) or not kind:
                raise InputError("missing or not a string", path=label, field=prefix + ".type")
            sender = event.get("sender")
            if not isinstance(sender, str) or not sender.strip():
                raise InputError("missing or not a user id", path=label, field=prefix + ".sender")
            ts = event.get("origin_server_ts")
            if ts is None:
                raise InputError("missing", path=label, field=prefix + ".origin_server_ts")
            if isinstance(ts, bool) or not isinstance(ts, (int, float)):
                raise InputError(f"expected epoch milliseconds, got {type(ts).__name__}", path=label,
                                 field=prefix + ".origin_server_ts")
            ts = epoch_seconds(ts, path=label, line=None, field=prefix + ".origin_server_ts")
            content = event.get("content", {})
            if not isinstance(content, dict):
                raise InputError(f"expected an object, got {type(content).__name__}", path=label, field=prefix + ".content")
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            is_system, is_bot, text, attachment = False, False, "", None
            rel_type, target, is_reply = _relation(content)
            if "state_key" in event or kind in SYSTEM_TYPES:
                is_system, text = True, kind
            elif kind == "m.room.encrypted":
                raise InputError("still encrypted (export the room with its keys)", path=label, field=prefix + ".type",
                                 kind="encrypted event")
            elif kind == "m.sticker":
                attachment = "sticker"
            elif kind == "m.room.message":
                if rel_type == "m.replace":
                    is_system, text = True, "edit"  # applied to the message it edits
                elif not content:
                    is_system, text = True, "redacted"
                else:
                    if event_id in edits:
                        content = edits[event_id]
                    msgtype = content.get("msgtype")
                    msgtype = msgtype if isinstance(msgtype, str) else repr(msgtype)[:40]
                    body = content.get("body")
                    if msgtype in TEXT_TYPES:
                        if not isinstance(body, str):
                            raise InputError("missing or not a string", path=label, field=prefix + ".content.body")
                        text = strip_reply_fallback(body) if is_reply or body.startswith("> <@") else body
                        is_bot = msgtype == "m.notice"
                        if msgtype == "m.emote" and text.strip():
                            text = "/me " + text.strip()
                    elif msgtype in MEDIA_TYPES:
                        attachment = MEDIA_TYPES[msgtype]
                        if msgtype in ("m.image", "m.video", "m.audio", "m.file"):
                            filename = content.get("filename") if isinstance(content.get("filename"), str) else None
                            attachment = attachment_kind(filename or body) if msgtype == "m.file" else attachment
                            if filename and isinstance(body, str) and body.strip() and body != filename:
                                text = body  # a caption
                    else:
                        raise InputError(f"unknown msgtype {str(msgtype)[:40]!r}", path=label, field=prefix + ".content.msgtype",
                                         kind=f"unknown Matrix type {str(msgtype)[:40]!r}")
            else:
                raise InputError(f"unknown event type {kind[:40]!r}", path=label, field=prefix + ".type",
                                 kind=f"unknown Matrix type {kind[:40]!r}")
        except InputError as error:
            opts.bad(error)
            continue
        username = names.get(sender) or sender.lstrip("@").split(":", 1)[0] or sender
        message = Message(
            channel, sender, username, clean_content(text, opts.max_message_chars), ts,
            is_bot=is_bot, is_system=is_system, format=FORMAT, msg_id=event_id,
            attachment=None if text.strip() else attachment,
        )
        if rel_type == "m.thread" and target and not is_system:
            yield dataclasses.replace(message, channel=f"{channel}/thread-{target}")
        else:
            yield message
            if event_id in roots and not is_system:
                yield dataclasses.replace(message, channel=f"{channel}/thread-{event_id}")
