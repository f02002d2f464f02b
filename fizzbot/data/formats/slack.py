"""Slack workspace exports: a folder or a zip of `users.json`, `channels.json` (and `groups.json`,
`mpims.json`, `dms.json` in full exports) and `<channel>/YYYY-MM-DD.json`, each a JSON array of one
day's messages. Slack's own exports and the tools that write its layout (slackdump, slack-export and
the like) read alike; old exports (2015-2017) and new ones differ in the fields a message carries.

`day_files` lists the day files (each becomes one `SourceUnit`, with `member` and `channel` set) and
`read` reads one. A message: `type: "message"`, `ts` (a *string* of epoch seconds, also its id), `user`
(an id), `text`, optional `subtype`, `user_profile` (newer exports), `bot_id`, `bot_profile`,
`attachments`, `files` (`file` in old exports), `blocks`, `thread_ts`, `reply_count`.

Traps, and what this reader does about them:

- Authors: `user`, else `comment.user` (an old `file_comment`), else the bot (`bot_id`, named by
  `username`, else `bot_profile.name`), else `user_profile`, else an integration's bare `username`.
  Names: `users.json` is read once per export (cached) and gives `profile.display_name`, else
  `real_name`, else `name`; a message's own `user_profile` wins (it is the name at the time).
- Subtypes, old and new: ordinary messages (`me_message` rendered `/me text`, `thread_broadcast`,
  `reply_broadcast`, `file_comment` (the words are `comment.comment`), `file_share` and `file_mention`
  (old exports wrote `<@U1|alice> uploaded a file: <url|name>` for them: the uploader's words are what
  follows ` and commented: `, else the message is attachment-only));
  bots (`bot_message`, `slackbot_response`, anything with a `bot_id`, a user marked `is_bot`); system
  events (joins `<@U1> has joined the channel`, leaves, topic, purpose, name, archive, pins,
  `bot_add`, `tombstone`, `message_changed`/`message_deleted`, huddles, ...): flagged `is_system`.
  A subtype this reader does not know is a skipped record, counted as `unknown subtype '<name>'`.
- No `text` at all (newer exports of bots and shared files): the words come from `blocks` (rich
  text), else from `attachments` (pretext, title, text), else the message is attachment-only and
  keeps the kind of its first file (`image`, `video`, `file`, ...) for the placeholder.
- Threads: a reply (`thread_ts` other than its own `ts`) goes to its thread, a channel of its own named
  `<channel>/thread-<thread_ts>`; a parent with replies is read into its thread as well, first, so a
  thread is its own conversation after its parent. The day files of a reply and its parent may differ.
- Markup: `<@U123>` and `<@U123|name>` -> `@name` (the id looked up first), `<#C123|name>` -> `#name`,
  `<!here>`/`<!channel>`/`<!everyone>` -> `@here`/..., `<!subteam^S1|@team>` and `<!date^...|text>`
  -> their label; links: `<https://x>` and `<https://x|x>` -> `https://x` (so a message that is only a
  link stays URL-only for the filter), `<https://x|label>` -> `label (https://x)`,
  `<mailto:a@b|a@b>` -> `a@b`; then the HTML escapes `&lt; &gt; &amp;` are undone.
- A channel is spread over many day files: each is a unit; sorting across them happens later, by `ts`.
  `ts` is the message's id within its channel: the same message in two overlapping exports is one.
- Errors are named `export.zip/general/2020-01-01.json: [4].ts: ...` (the record's index in the day).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from fizzbot.data.messages import InputError, Message, ReadOptions, attachment_kind, clean_content, epoch_seconds

if TYPE_CHECKING:
    from fizzbot.data.formats import SourceUnit

ORDINARY_SUBTYPES = frozenset(
    {None, "me_message", "thread_broadcast", "reply_broadcast", "file_share", "file_comment", "file_mention"}
)
BOT_SUBTYPES = frozenset({"bot_message", "slackbot_response"})
# Events, not speech (Slack's message subtypes, old and new, and what export tools add).
SYSTEM_SUBTYPES = frozenset({
    "bot_add", "bot_remove", "bot_enable", "bot_disable", "channel_join", "channel_leave", "channel_topic",
    "channel_purpose", "channel_name", "channel_archive", "channel_unarchive", "channel_posting_permissions",
    "channel_convert_to_private", "channel_convert_to_public", "channel_canvas_updated", "group_join",
    "group_leave", "group_topic", "group_purpose", "group_name", "group_archive", "group_unarchive",
    "pinned_item", "unpinned_item", "reminder_add", "reminder_delete", "tombstone", "message_changed",
    "message_deleted", "message_replied", "ekm_access_denied", "sh_room_created", "sh_room_shared",
    "huddle_thread", "joiner_notification", "joiner_notification_for_inviter", "app_conversation_join",
    "app_conversation_leave", "assistant_app_thread", "slackbot_notification", "team_join",
    "channel_name_change", "document_mention", "share_shortcut", "file_upload", "file_deleted",
})
SLACKBOT = "USLACKBOT"

_DAY_FILE_RE = re.compile(r"(?:^|/)([^/]+)/(\d{4}-\d\d-\d\d)\.json$")
# Old exports (to 2017) wrote a file share's text for it: `<@U1|alice> uploaded a file: <url|name>`,
# with the uploader's own words, if any, after ` and commented: `.
_UPLOAD_RE = re.compile(r"<@[^>]+> (?:uploaded|shared|mentioned) a file: <[^>]*>(?: and commented: (.*))?$", re.DOTALL)
_MARKUP_RE = re.compile(r"<([^<>\n]+)>")
_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.\-]*://", re.IGNORECASE)
_MAX_BLOCK_DEPTH = 12


# --- the export: a folder or a zip ---------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _open_zip(path: str, mtime_ns: int) -> zipfile.ZipFile:
    """One open ZipFile per export and process: opening re-reads the whole member directory."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"cannot open the Slack export zip: {exc}", path=path) from None


def _zip(path: str) -> zipfile.ZipFile:
    return _open_zip(path, Path(path).stat().st_mtime_ns)


def _member_bytes(export: str, member: str) -> bytes | None:
    """A file of the export, or None where it has none."""
    if Path(export).is_dir():
        file = Path(export) / member
        return file.read_bytes() if file.is_file() else None
    try:
        return _zip(export).read(member)
    except KeyError:
        return None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # a corrupt member (bad CRC, truncated)
        raise InputError(f"cannot read from the zip: {exc}", path=f"{export}/{member}") from None


def day_files(path: str | Path) -> list[tuple[str, str]]:
    """(member path inside the export, channel folder name) of every day file, by channel then date."""
    root = Path(path)
    if root.is_dir():
        names = [p.relative_to(root).as_posix() for p in root.rglob("*.json")]
    else:
        names = _zip(str(root)).namelist()
    found = []
    for name in names:
        if name.startswith("__MACOSX/"):  # resource forks that macOS zips carry along
            continue
        m = _DAY_FILE_RE.search(name)
        if m:
            found.append((m.group(1), m.group(2), name))
    if not found:
        raise InputError("no <channel>/YYYY-MM-DD.json day files: not a Slack export", path=str(path))
    found.sort()
    return [(name, channel) for channel, _, name in found]


def _first_text(*values: Any) -> str | None:
    """The first value that is a non-blank string, stripped."""
    for value in values:
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _profile_name(profile: Any) -> str | None:
    if not isinstance(profile, dict):
        return None
    return _first_text(profile.get("display_name"), profile.get("real_name"), profile.get("name"))


def _load_list(export: str, member: str) -> list:
    from fizzbot.data.formats import load_json

    data = _member_bytes(export, member)
    if data is None:
        return []
    parsed = load_json(f"{export}/{member}", data)
    if not isinstance(parsed, list):
        raise InputError("expected a JSON array", path=f"{export}/{member}", line=1)
    return parsed


@functools.lru_cache(maxsize=32)
def _directory(export: str, root: str, mtime_ns: int) -> tuple[dict[str, tuple[str, bool]], dict[str, str]]:
    """users.json as {id: (name, is_bot)} and the channel lists as {id: name}, once per export.

    `root` is the folder inside the export that holds them ("" unless the zip wraps a folder);
    `mtime_ns` only keys the cache.
    """
    users: dict[str, tuple[str, bool]] = {}
    for user in _load_list(export, root + "users.json"):
        if isinstance(user, dict) and isinstance(user.get("id"), str):
            profile = user.get("profile") if isinstance(user.get("profile"), dict) else {}
            name = _first_text(profile.get("display_name"), user.get("real_name"), profile.get("real_name"), user.get("name"))
            name = name or user["id"]
            users[user["id"]] = (name, user.get("is_bot") is True)
    channels: dict[str, str] = {}
    for listing in ("channels.json", "groups.json", "mpims.json"):
        for channel in _load_list(export, root + listing):
            if isinstance(channel, dict) and isinstance(channel.get("id"), str) and isinstance(channel.get("name"), str):
                channels[channel["id"]] = channel["name"]
    return users, channels


# --- one message ---------------------------------------------------------------------------------


def _bare_url(url: str) -> str:
    return _SCHEME_RE.sub("", url).removeprefix("www.").rstrip("/").lower()


def render_markup(text: str, users: dict[str, tuple[str, bool]], channels: dict[str, str]) -> str:
    """Slack's `<...>` markup and HTML escapes -> plain text."""

    def replace(m: re.Match) -> str:
        target, _, label = m.group(1).partition("|")
        kind = target[:1]
        if kind == "@":
            user = users.get(target[1:])
            return "@" + (user[0] if user else label.lstrip("@") or target[1:])
        if kind == "#":
            return "#" + (label or channels.get(target[1:]) or "unknown-channel")
        if kind == "!":
            command = target[1:].split("^", 1)[0]
            if command in ("here", "channel", "everyone"):
                return "@" + command
            return label or "@" + command  # subteam^S1|@team, date^...|fallback
        if not label or _bare_url(label) == _bare_url(target):
            return target
        if target.lower().startswith("mailto:"):
            return label
        return f"{label} ({target})"

    if "<" in text:
        text = _MARKUP_RE.sub(replace, text)
    if "&" in text:
        text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return text


def _attachment_text(attachments: Any) -> str:
    """The words of a bot's attachments: pretext, title and text, else the plain-text fallback."""
    pieces = []
    for attachment in attachments if isinstance(attachments, list) else []:
        if isinstance(attachment, dict):
            words = [_first_text(attachment.get(key)) for key in ("pretext", "title", "text")]
            words = [w for w in words if w] or [_first_text(attachment.get("fallback"))]
            pieces.extend(w for w in words if w)
    return "\n".join(pieces)


def _block_text(node: Any, users: dict[str, tuple[str, bool]], channels: dict[str, str], depth: int = 0) -> str:
    """The words of Block Kit blocks: rich-text elements (text, links, mentions, emoji) and mrkdwn texts."""
    if depth > _MAX_BLOCK_DEPTH:
        return ""
    if isinstance(node, list):
        return "".join(_block_text(item, users, channels, depth + 1) for item in node)
    if not isinstance(node, dict):
        return ""
    kind = node.get("type")
    if kind == "text" and isinstance(node.get("text"), str):
        return node["text"]
    if kind == "link" and isinstance(node.get("url"), str):
        return node["text"] if isinstance(node.get("text"), str) and node["text"] else node["url"]
    if kind == "user" and isinstance(node.get("user_id"), str):
        user = users.get(node["user_id"])
        return "@" + (user[0] if user else node["user_id"])
    if kind == "channel" and isinstance(node.get("channel_id"), str):
        return "#" + channels.get(node["channel_id"], "unknown-channel")
    if kind == "emoji" and isinstance(node.get("name"), str):
        return f":{node['name']}:"
    if kind == "broadcast" and isinstance(node.get("range"), str):
        return "@" + node["range"]
    if kind in ("mrkdwn", "plain_text") and isinstance(node.get("text"), str):
        return render_markup(node["text"], users, channels)
    pieces = []
    for key in ("elements", "text", "fields"):
        if key in node and not isinstance(node[key], str):
            piece = _block_text(node[key], users, channels, depth + 1)
            if piece:
                pieces.append(piece)
    separator = "\n" if kind in ("rich_text", "section", "rich_text_list", "rich_text_quote", "rich_text_preformatted") else ""
    return separator.join(pieces)


def _files_kind(record: dict) -> str | None:
    """The attachment kind of the message's first file (`files`, or the old single `file`)."""
    files = record.get("files")
    if not isinstance(files, list) or not files:
        files = [record["file"]] if isinstance(record.get("file"), dict) else []
    for item in files:
        if isinstance(item, dict):
            return attachment_kind(item.get("mimetype") or item.get("name") or item.get("filetype"))
    return None


def _timestamp(value: Any, path: str, field: str) -> float:
    if value is None:
        raise InputError("missing", path=path, field=field)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InputError(f"expected a string of epoch seconds, got {type(value).__name__}", path=path, field=field)
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise InputError(f"not epoch seconds: {str(value)[:40]!r}", path=path, field=field) from None
    return epoch_seconds(number, path=path, line=None, field=field)


def _optional_str(record: dict, key: str, path: str, field: str) -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise InputError(f"expected a string, got {type(value).__name__}", path=path, field=field)
    return value


def read(unit: "SourceUnit", opts: ReadOptions) -> Iterator[Message]:
    from fizzbot.data.formats import load_json

    if unit.member is None or unit.channel is None:
        raise InputError("a Slack unit needs its day file and channel (from expand_inputs)", path=unit.path)
    label = f"{unit.path}/{unit.member}"
    data = _member_bytes(unit.path, unit.member)
    if data is None:
        raise InputError("no such day file in the export", path=label)
    records = load_json(label, data)
    if not isinstance(records, list):
        raise InputError("expected a JSON array of messages", path=label, line=1)
    # The listings sit two levels above `<channel>/<day>.json`, at the export's root.
    root = unit.member.rsplit("/", 2)[0] + "/" if unit.member.count("/") >= 2 else ""
    users, channels = _directory(unit.path, root, Path(unit.path).stat().st_mtime_ns)

    for index, record in enumerate(records):
        prefix = f"[{index}]"
        try:
            if not isinstance(record, dict):
                raise InputError(f"expected an object, got {type(record).__name__}", path=label, field=prefix)
            kind = record.get("type", "message")
            if kind != "message":
                raise InputError(f"not a message: {str(kind)[:40]!r}", path=label, field=prefix + ".type",
                                 kind=f"unknown Slack type {str(kind)[:40]!r}")
            ts_text = record.get("ts")
            ts = _timestamp(ts_text, label, prefix + ".ts")
            subtype = _optional_str(record, "subtype", label, prefix + ".subtype")
            if subtype not in ORDINARY_SUBTYPES and subtype not in BOT_SUBTYPES and subtype not in SYSTEM_SUBTYPES:
                raise InputError(f"unknown subtype {subtype[:40]!r}", path=label, field=prefix + ".subtype",
                                 kind=f"unknown Slack subtype {subtype[:40]!r}")
            user_id = _optional_str(record, "user", label, prefix + ".user")
            comment = record.get("comment") if isinstance(record.get("comment"), dict) else None
            if not user_id and comment is not None and isinstance(comment.get("user"), str):
                user_id = comment["user"]
            bot_id = record.get("bot_id") if isinstance(record.get("bot_id"), str) and record["bot_id"] else None
            known = users.get(user_id) if user_id else None
            # Slackbot posts as a user that users.json does not list.
            is_bot = subtype in BOT_SUBTYPES or bot_id is not None or user_id == SLACKBOT or bool(known and known[1])
            is_system = subtype in SYSTEM_SUBTYPES
            text = _optional_str(record, "text", label, prefix + ".text") or ""
            if subtype == "file_comment" and comment is not None and isinstance(comment.get("comment"), str):
                text = comment["comment"]
            elif subtype in ("file_share", "file_mention"):
                upload = _UPLOAD_RE.match(text)
                if upload:
                    text = upload.group(1) or ""
            bot_name = _first_text(record.get("username")) or _profile_name(record.get("bot_profile"))
            if is_bot and (subtype in BOT_SUBTYPES or not user_id):
                author_id = bot_id or user_id or bot_name
                username = bot_name or (known[0] if known else None) or author_id
            else:
                author_id = user_id or bot_name or _profile_name(record.get("user_profile"))
                username = _profile_name(record.get("user_profile")) or (known[0] if known else None) or author_id
            if not author_id:
                raise InputError("no author (user, comment.user, bot_id, bot_profile, username or user_profile)", path=label,
                                 field=prefix + ".user", kind="no author")
            thread_ts = record.get("thread_ts") if isinstance(record.get("thread_ts"), str) else None
        except InputError as error:
            opts.bad(error)
            continue
        attachment = None
        if text.strip():
            text = render_markup(text, users, channels)
        else:  # no words of its own: a bot's blocks or attachments, else an attachment-only message
            text = _block_text(record.get("blocks"), users, channels) if record.get("blocks") else ""
            if not text.strip():
                text = render_markup(_attachment_text(record.get("attachments")), users, channels)
            if not text.strip():
                attachment = _files_kind(record)
        if subtype == "me_message" and text.strip():
            text = "/me " + text.strip()
        message = Message(
            channel=unit.channel,
            author_id=str(author_id),
            username=str(username),
            content=clean_content(text, opts.max_message_chars),
            ts=ts,
            is_bot=is_bot,
            is_system=is_system,
            format="slack",
            msg_id=str(ts_text),
            attachment=attachment,
        )
        if thread_ts is None or is_system:
            yield message
        elif thread_ts != ts_text:
            yield dataclasses.replace(message, channel=thread_channel(unit.channel, thread_ts))
        else:
            yield message
            if _has_replies(record):
                yield dataclasses.replace(message, channel=thread_channel(unit.channel, thread_ts))


def thread_channel(channel: str, thread_ts: str) -> str:
    """The channel a thread's messages go to: its own, named by the channel and the parent's `ts`."""
    return f"{channel}/thread-{thread_ts}"


def _has_replies(record: dict) -> bool:
    count = record.get("reply_count")
    return (isinstance(count, int) and not isinstance(count, bool) and count > 0) or bool(
        isinstance(record.get("replies"), list) and record["replies"]
    ) or bool(isinstance(record.get("reply_users"), list) and record["reply_users"])
