"""Every reader, fed anything, yields rows or raises the one-line InputError that names the file (and
the line or field): property-based tests (hypothesis) that mutate real-shaped exports of every format
(missing fields, wrong types, nulls, unknown subtypes, odd timestamps, huge lines, bad bytes,
truncation) and accept exactly that. Any other exception is a failure.

The examples are few and derandomised (the same on every run and in CI), so the suite stays fast. A
deeper, random hunt: `FIZZBOT_PROPERTY_EXAMPLES=2000 pytest tests/test_readers_property.py`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export_samples import (
    ANDROID_12H_US,
    ANDROID_24H,
    CLIENTS,
    DCE_MESSAGES,
    IOS,
    SLACK_2016_DAY,
    SLACK_2016_NEXT_DAY,
    SLACK_2016_USERS,
    dce,
    element_export,
    telegram_forum,
)
from fizzbot.data.formats import discord, expand_inputs, read_unit
from fizzbot.data.messages import InputError, ReadOptions

_DEEP = os.environ.get("FIZZBOT_PROPERTY_EXAMPLES")
EXAMPLES = settings(
    max_examples=int(_DEEP) if _DEEP else 30,
    deadline=None,
    derandomize=not _DEEP,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Whole-file problems that have no line or field to name: the file is all there is to say.
WHOLE_FILE = ("empty file", "cannot read", "not a readable zip", "not a zip", "no _chat.txt", "cannot open",
              "no <channel>/YYYY-MM-DD.json", "unknown export format", "looks like one day file", "folder holds no files",
              "malformed JSON: the document ends early", "cannot read the chat from the zip")

ODD_VALUES = [
    None, True, False, 0, -1, 1.5, 10**30, -(10**20), float("inf"), float("nan"), "", " ", "x" * 3000,
    "2020-13-45T99:99:99", "1e400", "NaN", "-1", "9" * 40, "0x10", "\x00", "\ud83d", "bot_message", "tombstone",
    "a_subtype_from_the_future", "service", "Default", "20", "m.room.message", "m.text", "@nobody:nowhere",
    "<@U999>", "<!here>", "> <@x:y> quoted\n\nreply", [], [1, "a", None], {}, {"text": 3}, {"type": "link"},
]
JUNK = st.one_of(
    st.sampled_from(ODD_VALUES).map(copy.deepcopy),  # a fresh copy: a later mutation must not change the sample
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.sampled_from(["id", "name", "text", "type", "user"]), st.text(max_size=5), max_size=2),
)
FORMATS_FOR = {"auto": None}


def check(path: Path, fmt: str, on_error: str, timezone: str | None = None) -> None:
    """Rows, each well-formed, or one InputError of one line that names the file (and line or field)."""
    opts = ReadOptions(on_error=on_error, timezone=timezone)
    try:
        units = expand_inputs([str(path)], fmt)
        messages = [m for unit in units for m in read_unit(unit, opts)]
    except InputError as error:
        assert_located(error, path)
        return
    for m in messages:
        assert type(m.ts) is float and math.isfinite(m.ts), m
        assert isinstance(m.content, str) and isinstance(m.username, str) and isinstance(m.channel, str), m
        assert m.author_id and isinstance(m.author_id, str) and m.channel, m
        m.content.encode("utf-8"), m.username.encode("utf-8"), m.channel.encode("utf-8")  # writable
        assert m.attachment is None or isinstance(m.attachment, str)
    for error in opts.errors:
        assert_located(error, path)
    assert on_error != "fail" or not opts.errors


def assert_located(error: InputError, path: Path) -> None:
    text = str(error)
    assert "\n" not in text and "\r" not in text, text
    assert text.startswith(str(path)), text
    assert error.line is not None or error.field is not None or error.reason.startswith(WHOLE_FILE), text
    json.dumps(error.to_dict())  # a sample stats.json can hold


def mutate_json(data: st.DataObject, doc: object) -> object:
    """The document with 1-4 changes at random places: a value replaced by junk, a key dropped or added."""
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 4))):
        parent, key, node = None, None, doc
        while isinstance(node, (dict, list)) and node and data.draw(st.integers(0, 3)) > 0:
            keys = sorted(node) if isinstance(node, dict) else list(range(len(node)))
            parent, key = node, data.draw(st.sampled_from(keys))
            node = parent[key]
        operation = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if parent is None:
            if operation == "replace":
                doc = data.draw(JUNK)
            continue
        if operation == "replace":
            parent[key] = data.draw(JUNK)
        elif operation == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[data.draw(st.sampled_from(["subtype", "type", "extra", "thread_ts", "attachments"]))] = data.draw(JUNK)
        else:
            parent.insert(key, data.draw(JUNK))
    return doc


def damage_bytes(data: st.DataObject, raw: bytes) -> bytes:
    """Sometimes: bytes that are not UTF-8, a cut, a huge line, NULs."""
    choice = data.draw(st.sampled_from(["none", "none", "bad_bytes", "truncate", "huge", "nul"]))
    if not raw or choice == "none":
        return raw
    at = data.draw(st.integers(0, len(raw)))
    if choice == "bad_bytes":
        return raw[:at] + data.draw(st.sampled_from([b"\xff\xfe", b"\xe9", b"\xc3", b"\x80\x80"])) + raw[at:]
    if choice == "truncate":
        return raw[:at]
    if choice == "huge":
        return raw[:at] + b"z" * 1_100_000 + raw[at:]
    return raw[:at] + b"\x00" + raw[at:]


def dump(doc: object) -> bytes:
    try:
        return json.dumps(doc, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError):
        return b"{}"


ON_ERROR = st.sampled_from(["fail", "skip_messages", "skip"])


# --- JSON formats ------------------------------------------------------------------------------------


SEED = [{"username": "alice", "content": "hi", "timestamp": "2021-01-01T10:00:00Z", "id": 1},
        {"username": "bob", "content": "hello", "timestamp": 1609495260, "author_id": "b", "is_bot": False}]


@EXAMPLES
@given(st.data(), ON_ERROR, st.booleans())
def test_seed_survives_anything(data, on_error, as_lines):
    doc = mutate_json(data, SEED)
    if as_lines and isinstance(doc, list):
        raw = b"\n".join(dump(record) for record in doc)
    else:
        raw = dump(doc)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "general.jsonl"
        path.write_bytes(damage_bytes(data, raw))
        check(path, data.draw(st.sampled_from(["auto", "seed"])), on_error)


@EXAMPLES
@given(st.data(), ON_ERROR, st.booleans())
def test_discord_json_survives_anything(data, on_error, streamed):
    doc = mutate_json(data, json.loads(dce(DCE_MESSAGES)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "G - Text - general [111].json"
        path.write_bytes(damage_bytes(data, dump(doc)))
        saved = discord.STREAM_ABOVE_BYTES
        discord.STREAM_ABOVE_BYTES = 0 if streamed else saved
        try:
            check(path, "discord", on_error)
        finally:
            discord.STREAM_ABOVE_BYTES = saved


@EXAMPLES
@given(st.data(), ON_ERROR)
def test_slack_survives_anything(data, on_error):
    day = mutate_json(data, SLACK_2016_DAY + SLACK_2016_NEXT_DAY)
    users = mutate_json(data, SLACK_2016_USERS) if data.draw(st.booleans()) else SLACK_2016_USERS
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "export"
        (root / "general").mkdir(parents=True)
        (root / "users.json").write_bytes(dump(users))
        (root / "channels.json").write_bytes(b'[{"id": "C1", "name": "general"}]')
        (root / "general" / "2016-03-27.json").write_bytes(damage_bytes(data, dump(day)))
        if data.draw(st.booleans()):
            archive = Path(folder) / "export.zip"
            with zipfile.ZipFile(archive, "w") as zf:
                for file in root.rglob("*.json"):
                    zf.write(file, file.relative_to(root).as_posix())
            check(archive, "auto", on_error)
        else:
            check(root, "auto", on_error)


@EXAMPLES
@given(st.data(), ON_ERROR)
def test_telegram_survives_anything(data, on_error):
    chat = telegram_forum()
    doc = mutate_json(data, {"about": "", "chats": {"about": "", "list": [chat]}} if data.draw(st.booleans()) else chat)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "result.json"
        path.write_bytes(damage_bytes(data, dump(doc)))
        check(path, "telegram", on_error, timezone=data.draw(st.sampled_from([None, "Asia/Tokyo"])))


@EXAMPLES
@given(st.data(), ON_ERROR)
def test_matrix_survives_anything(data, on_error):
    doc = mutate_json(data, element_export())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "room.json"
        path.write_bytes(damage_bytes(data, dump(doc)))
        check(path, "matrix", on_error)


# --- text formats ------------------------------------------------------------------------------------

LINE_JUNK = st.one_of(
    st.text(max_size=80),
    st.sampled_from([
        "", "[99:99] <x> bad time", "[10:00] < > no nick", "<>", "* ", "--- Day changed Feb 30 2020",
        "Session Start: Mon Foo 99 99:99:99 2014", "**** BEGIN LOGGING AT", "2020-02-30 10:00:00\tnick\tx",
        "Dec 99 10:00:00 <a>\tx", "[2020-01-01T10:00:00+9999] <a> x", "rust 2020-13-01 [10:00:00] <a> x",
        "31/31/31, 25:61 - A: x", "[1/2/3, 4:5] A: x", "99/99/9999, 99:99 PM - A: x", "\u200e[", "\x03\x0299,99", "\x02\x03", "\x0f",
        "AuthorID,Author,Date,Content", '"100","a","nope","x","",""', '"unterminated', "a;b;c;d;e;f;g;h",
        "x" * 5000,
    ]),
)


def mutate_lines(data: st.DataObject, text: str) -> bytes:
    lines = text.split("\n")
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, max(0, len(lines) - 1)))
        operation = data.draw(st.sampled_from(["replace", "insert", "delete", "duplicate"]))
        if operation == "replace" and lines:
            lines[at] = data.draw(LINE_JUNK)
        elif operation == "insert":
            lines.insert(at, data.draw(LINE_JUNK))
        elif operation == "delete" and lines:
            del lines[at]
        elif lines:
            lines.insert(at, lines[at])
    newline = data.draw(st.sampled_from(["\n", "\r\n"]))
    return damage_bytes(data, newline.join(lines).encode("utf-8", "surrogatepass"))


@EXAMPLES
@given(st.data(), ON_ERROR, st.sampled_from(sorted(CLIENTS)))
def test_irc_survives_anything(data, on_error, client):
    name, text, *_ = CLIENTS[client]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(name).name
        path.write_bytes(mutate_lines(data, text))
        check(path, data.draw(st.sampled_from(["auto", "irc"])), on_error,
              timezone=data.draw(st.sampled_from([None, "America/New_York"])))


@EXAMPLES
@given(st.data(), ON_ERROR, st.sampled_from([ANDROID_24H, ANDROID_12H_US, IOS]))
def test_whatsapp_survives_anything(data, on_error, text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "WhatsApp Chat with Family.txt"
        raw = mutate_lines(data, text)
        if data.draw(st.booleans()):
            archive = Path(folder) / "WhatsApp Chat - Family.zip"
            with zipfile.ZipFile(archive, "w") as zf:
                zf.writestr("_chat.txt", raw)
            check(archive, "auto", on_error)
        else:
            path.write_bytes(raw)
            check(path, "whatsapp", on_error)


CSV_SAMPLES = [
    "AuthorID,Author,Date,Content,Attachments,Reactions\n"
    '"100","alice","2021-03-01T10:01:00.000+00:00","hello\nthere","",""\n'
    '"200","bob","01-Mar-21 10:02 AM","","https://cdn/x.png",""\n',
    "Author;Date;Content;Attachments;\n"
    '"alice#1234";"01-Mar-21 10:01 AM";"hello";"";\n'
    '"bob#0001";"3/1/2021 10:02 AM";"";"https://cdn/x.png";\n',
]


@EXAMPLES
@given(st.data(), ON_ERROR, st.sampled_from(CSV_SAMPLES))
def test_discord_csv_survives_anything(data, on_error, text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "G - general [111].csv"
        path.write_bytes(mutate_lines(data, text))
        check(path, "discord_csv", on_error, timezone=data.draw(st.sampled_from([None, "Europe/Paris"])))


@pytest.mark.parametrize("fmt", ["seed", "discord", "discord_csv", "slack", "telegram", "irc", "whatsapp", "matrix"])
def test_random_bytes_in_any_format(tmp_path, fmt):
    """Not the format at all: the one-line error, or nothing read."""
    path = tmp_path / "noise.bin"
    path.write_bytes(bytes(range(256)) * 4)
    for on_error in ("fail", "skip_messages", "skip"):
        check(path, fmt, on_error)
