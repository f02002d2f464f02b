"""Slack workspace exports: a folder or a zip of `users.json`, `channels.json` (and `groups.json`,
`mpims.json`, `dms.json` in full exports) and `<channel>/YYYY-MM-DD.json`, each a JSON array of one
day's messages.

`day_files` lists the day files (each becomes one `SourceUnit`, with `member` and `channel` set) and
`read` reads one. A message: `type: "message"`, `ts` (a *string* of epoch seconds, also its id), `user`
(an id), `text`, optional `subtype`, `user_profile` (newer exports), `bot_id`, `attachments`, `files`.

Traps, and what this reader does about them:

- Names: `users.json` is read once per export (cached) and gives `profile.display_name`, else
  `real_name`, else `name`; a message's own `user_profile` wins (it is the name at the time).
- Subtypes: `bot_message` (and `slackbot_response`, a `bot_id`, or a user marked `is_bot`) -> `is_bot`,
  named by the message's `username`, else `bot_profile.name`; `me_message` (rendered `/me text`),
  `thread_broadcast` and `file_share` are ordinary messages; every other subtype (joins `<@U1> has
  joined the channel`, leaves, topic, purpose, name, archive, pins, bot_add, tombstone, ...) is `is_system`.
- Markup: `<@U123>` and `<@U123|name>` -> `@name` (the id looked up first), `<#C123|name>` -> `#name`,
  `<!here>`/`<!channel>`/`<!everyone>` -> `@here`/..., `<!subteam^S1|@team>` and `<!date^...|text>`
  -> their label; links: `<https://x>` and `<https://x|x>` -> `https://x` (so a message that is only a
  link stays URL-only for the filter), `<https://x|label>` -> `label (https://x)`,
  `<mailto:a@b|a@b>` -> `a@b`; then the HTML escapes `&lt; &gt; &amp;` are undone.
- Bots often post empty `text` with the words in `attachments`: those are used (pretext, title, text).
- A channel is spread over many day files: each is a unit; sorting across them happens later, by `ts`.
- Errors are named `export.zip/general/2020-01-01.json: [4].ts: ...` (the record's index in the day).
"""

from __future__ import annotations

import functools
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from fizzbot.data.messages import InputError, Message, ReadOptions, clean_content

if TYPE_CHECKING:
    from fizzbot.data.formats import SourceUnit

ORDINARY_SUBTYPES = frozenset({None, "me_message", "thread_broadcast", "reply_broadcast", "file_share"})
BOT_SUBTYPES = frozenset({"bot_message", "slackbot_response"})
SLACKBOT = "USLACKBOT"

_DAY_FILE_RE = re.compile(r"(?:^|/)([^/]+)/(\d{4}-\d\d-\d\d)\.json$")
_MARKUP_RE = re.compile(r"<([^<>\n]+)>")
_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.\-]*://", re.IGNORECASE)


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
            users[user["id"]] = (name, bool(user.get("is_bot")))
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


def _timestamp(value: Any, path: str, field: str) -> float:
    if value is None:
        raise InputError("missing", path=path, field=field)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InputError(f"expected a string of epoch seconds, got {type(value).__name__}", path=path, field=field)
    try:
        return float(value)
    except ValueError:
        raise InputError(f"not epoch seconds: {value!r}", path=path, field=field) from None


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
            ts = _timestamp(record.get("ts"), label, prefix + ".ts")
            subtype = record.get("subtype")
            if subtype is not None and not isinstance(subtype, str):
                raise InputError(f"expected a string, got {type(subtype).__name__}", path=label, field=prefix + ".subtype")
            user_id = record.get("user")
            if user_id is not None and not isinstance(user_id, str):
                raise InputError(f"expected a user id string, got {type(user_id).__name__}", path=label, field=prefix + ".user")
            bot_id = record.get("bot_id") if isinstance(record.get("bot_id"), str) else None
            known = users.get(user_id) if user_id else None
            # Slackbot posts as a user that users.json does not list.
            is_bot = subtype in BOT_SUBTYPES or bot_id is not None or user_id == SLACKBOT or bool(known and known[1])
            is_system = record.get("type", "message") != "message" or (
                subtype not in ORDINARY_SUBTYPES and subtype not in BOT_SUBTYPES
            )
            text = record.get("text")
            if text is None:
                if not (is_bot or is_system):
                    raise InputError("missing", path=label, field=prefix + ".text")
                text = ""
            if not isinstance(text, str):
                raise InputError(f"expected a string, got {type(text).__name__}", path=label, field=prefix + ".text")
            if is_bot and (subtype in BOT_SUBTYPES or not user_id):
                bot_name = record.get("username") or _profile_name(record.get("bot_profile"))
                author_id = bot_id or user_id or bot_name
                username = bot_name or (known[0] if known else None) or author_id
            else:
                author_id = user_id
                username = _profile_name(record.get("user_profile")) or (known[0] if known else user_id)
            if not author_id:
                raise InputError("missing (no user, bot_id or username)", path=label, field=prefix + ".user")
        except InputError as error:
            opts.bad(error)
            continue
        if not text.strip() and record.get("attachments"):
            text = _attachment_text(record["attachments"])
        content = render_markup(text, users, channels)
        if subtype == "me_message" and content.strip():
            content = "/me " + content.strip()
        yield Message(
            channel=unit.channel,
            author_id=str(author_id),
            username=str(username),
            content=clean_content(content, opts.max_message_chars),
            ts=ts,
            is_bot=is_bot,
            is_system=is_system,
            format="slack",
        )
