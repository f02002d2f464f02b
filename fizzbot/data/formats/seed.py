"""The seed format: one file per channel, a JSON array or JSON lines of {username, content, timestamp}.

The channel is the file name without its extension. Timestamps are ISO 8601 (no offset means UTC),
epoch seconds or milliseconds (an ISO time without offset is in `data.timezone`, default UTC).
Optional fields: `author_id` (defaults to the username), `is_bot`, `channel` (overrides the file name),
`id` (the message's id in its source: a message read twice from overlapping files is kept once).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from fizzbot.data.messages import InputError, Message, ReadOptions, clean_content, parse_timestamp

if TYPE_CHECKING:
    from fizzbot.data.formats import SourceUnit

# A line longer than this is refused before it is parsed: a 50 MB single line is a broken export.
MAX_LINE_BYTES = 1 << 20


def _records(path: Path, opts: ReadOptions) -> Iterator[tuple[int | None, str, object]]:
    """(line number, field prefix, parsed value) for a JSON array or JSON lines file.

    json.loads keeps no line numbers, so in an array a record is named by its index: `[4].content`.
    """
    with path.open("rb") as fh:
        head = fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head:
        raise InputError("empty file", path=str(path))
    if head.startswith(b"["):
        from fizzbot.data.formats import load_json

        data = load_json(path)
        if not isinstance(data, list):
            raise InputError("expected a JSON array of messages", path=str(path), line=1)
        # json.loads loses line numbers; the record's index (1-based) stands in for it.
        for index, record in enumerate(data):
            yield None, f"[{index}].", record
        return
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if len(raw) > MAX_LINE_BYTES:
                opts.bad(InputError(
                    f"line of {len(raw):,} bytes is over the {MAX_LINE_BYTES:,}-byte limit",
                    path=str(path), line=number, kind="line over the size limit",
                ))
                continue
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                opts.bad(InputError(f"not UTF-8 (byte {exc.start} of the line)", path=str(path), line=number))
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                opts.bad(InputError(f"malformed JSON: {exc.msg} (column {exc.colno})", path=str(path), line=number))
                continue
            except RecursionError:
                opts.bad(InputError("malformed JSON: nested too deeply", path=str(path), line=number))
                continue
            yield number, "", record


def read(unit: "SourceUnit", opts: ReadOptions) -> Iterator[Message]:
    path = Path(unit.path)
    default_channel = path.stem
    for line, prefix, record in _records(path, opts):
        where = {"path": str(path), "line": line}
        if not isinstance(record, dict):
            opts.bad(InputError(f"expected an object, got {type(record).__name__}", field=prefix.rstrip(".") or None, **where))
            continue
        try:
            username = record.get("username")
            if not isinstance(username, str) or not username.strip():
                raise InputError("missing or not a non-empty string", field=prefix + "username", **where)
            content = record.get("content")
            if content is None:
                raise InputError("missing", field=prefix + "content", **where)
            if not isinstance(content, str):
                raise InputError(f"expected a string, got {type(content).__name__}", field=prefix + "content", **where)
            if "timestamp" not in record:
                raise InputError("missing", field=prefix + "timestamp", **where)
            ts = parse_timestamp(record["timestamp"], path=str(path), line=line, field=prefix + "timestamp", tz=opts.tz)
            author_id = record.get("author_id", username)
            if isinstance(author_id, bool) or not isinstance(author_id, (str, int)) or str(author_id) == "":
                raise InputError("expected a non-empty string or number", field=prefix + "author_id", **where)
            channel = record.get("channel", default_channel)
            if not isinstance(channel, str) or not channel.strip():
                raise InputError("expected a non-empty string", field=prefix + "channel", **where)
            msg_id = record.get("id")
            if msg_id is not None and (isinstance(msg_id, bool) or not isinstance(msg_id, (str, int))):
                raise InputError(f"expected a string or number, got {type(msg_id).__name__}", field=prefix + "id", **where)
        except InputError as error:
            opts.bad(error)
            continue
        yield Message(
            channel=channel,
            author_id=str(author_id),
            username=username.strip(),
            content=clean_content(content, opts.max_message_chars),
            ts=ts,
            is_bot=record.get("is_bot") in (True, 1),
            format="seed",
            msg_id=None if msg_id is None else str(msg_id),
        )
