"""The export readers: each format's traps, bad input located by file and line or field, and the
real Ubuntu IRC logs read without a single error."""

from __future__ import annotations

import json
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest

from export_samples import utc, write
from fizzbot.data.formats import _sniff, expand_inputs, read_unit
from fizzbot.data.formats.discord import parse_locale_date
from fizzbot.data.formats.slack import day_files
from fizzbot.data.messages import InputError, Message, ReadOptions

UBUNTU_LOGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ubuntu-irc" / "logs"


def read_all(paths: list[Path] | Path, fmt: str = "auto", **opts) -> list[Message]:
    """Every message of `paths`, through the same expand/read path that `prepare` takes."""
    paths = paths if isinstance(paths, list) else [paths]
    options = ReadOptions(**opts)
    return [m for unit in expand_inputs([str(p) for p in paths], fmt) for m in read_unit(unit, options)]


def by_content(messages: list[Message]) -> dict[str, Message]:
    return {m.content: m for m in messages}


# --- DiscordChatExporter JSON ------------------------------------------------------------------


def dce_message(mid: str, author: dict, content: str, *, kind: str = "Default", ts: str = "2021-03-01T10:00:00+00:00", **extra) -> dict:
    return {
        "id": mid, "type": kind, "timestamp": ts, "timestampEdited": None, "isPinned": False,
        "content": content, "author": author, "attachments": [], "embeds": [], "stickers": [],
        "reactions": [], "mentions": [], **extra,
    }


ALICE = {"id": "100", "name": "alice", "discriminator": "0000", "nickname": "Ali", "isBot": False,
         "roles": [{"id": "555", "name": "mods", "color": None, "position": 1}]}
BOB = {"id": "200", "name": "bob", "discriminator": "0000", "nickname": "bob", "isBot": False, "roles": []}
WEATHERBOT = {"id": "900", "name": "WeatherBot", "discriminator": "1234", "nickname": "WeatherBot", "isBot": True, "roles": []}


def dce_export(messages: list[dict], *, channel_id: str = "111", name: str = "general", category: str = "Text Channels",
               category_id: str = "10", kind: str = "GuildTextChat") -> dict:
    return {
        "guild": {"id": "1", "name": "Fizz Guild", "iconUrl": ""},
        "channel": {"id": channel_id, "type": kind, "categoryId": category_id, "category": category, "name": name, "topic": None},
        "dateRange": {"after": None, "before": None},
        "exportedAt": "2021-03-02T00:00:00+00:00",
        "messages": messages,
        "messageCount": len(messages),
    }


def test_discord_json_types_bots_embeds_and_mentions(tmp_path):
    messages = [
        dce_message("1", BOB, "Joined the server.", kind="GuildMemberJoin"),
        dce_message("2", ALICE, "hey <@200> and <@!333>, see <#111> or <#999>, ping <@&555> <@&556> <:pog:12> <a:dance:34>",
                    mentions=[{"id": "200", "name": "bob", "nickname": "Bobby", "isBot": False}]),
        dce_message("3", BOB, "@Ali already rendered", kind="Reply", reference={"messageId": "2"}),
        dce_message("4", ALICE, "Pinned a message.", kind="ChannelPinnedMessage"),
        dce_message("5", WEATHERBOT, "", embeds=[{"title": "Forecast", "description": "Sunny, 21°C", "fields": [{"name": "Wind", "value": "light"}]}]),
        dce_message("6", ALICE, "seven digits of fraction", ts="2021-03-01T11:00:00.1234567+01:00"),
    ]
    path = write(tmp_path / "Fizz Guild - Text Channels - general [111].json", json.dumps(dce_export(messages), indent=2))
    assert _sniff(path) == "discord"
    got = read_all(path)

    assert [m.content for m in got] == [
        "Joined the server.",
        "hey @Bobby and @unknown, see #general or #unknown-channel, ping @mods @unknown-role :pog: :dance:",
        "@Ali already rendered",
        "Pinned a message.",
        "Forecast\nSunny, 21°C\nWind: light",
        "seven digits of fraction",
    ]
    # System messages by type, whatever their text; a Reply is an ordinary message.
    assert [m.is_system for m in got] == [True, False, False, True, False, False]
    assert [m.is_bot for m in got] == [False, False, False, False, True, False]
    # Keyed on the id; named by the nickname at export time.
    assert (got[1].author_id, got[1].username) == ("100", "Ali")
    assert got[5].ts == pytest.approx(utc(2021, 3, 1, 10, 0, 0) + 0.123456)
    assert {m.channel for m in got} == {"Fizz Guild/Text Channels/general [111]"}
    assert {m.format for m in got} == {"discord"}


def test_discord_part_files_share_a_channel_and_namesakes_do_not(tmp_path):
    part1 = dce_export([dce_message("1", ALICE, "first half")])
    part2 = dce_export([dce_message("2", BOB, "second half", ts="2021-03-02T10:00:00+00:00")])
    namesake = dce_export([dce_message("3", BOB, "other general")], channel_id="112", category="Voice Chat", category_id="11")
    twin = dce_export([dce_message("4", BOB, "same category, same name")], channel_id="113")
    thread = dce_export([dce_message("5", ALICE, "in a thread")], channel_id="333", name="help", category="general",
                        category_id="111", kind="GuildPublicThread")
    write(tmp_path / "Fizz Guild - Text Channels - general [111].json", json.dumps(part1))
    write(tmp_path / "Fizz Guild - Text Channels - general [111] [part 2].json", json.dumps(part2))
    write(tmp_path / "Fizz Guild - Voice Chat - general [112].json", json.dumps(namesake))
    write(tmp_path / "Fizz Guild - Text Channels - general [113].json", json.dumps(twin))
    write(tmp_path / "Fizz Guild - general - help [333].json", json.dumps(thread))

    channels = {m.content: m.channel for m in read_all(tmp_path)}
    assert channels["first half"] == channels["second half"] == "Fizz Guild/Text Channels/general [111]"
    assert channels["other general"] == "Fizz Guild/Voice Chat/general [112]"
    assert channels["same category, same name"] == "Fizz Guild/Text Channels/general [113]"
    assert channels["in a thread"] == "Fizz Guild/general/help [333]"  # a thread's category is its parent
    assert len(set(channels.values())) == 4


def test_discord_json_bad_records_are_named_by_field(tmp_path):
    records = [
        dce_message("1", ALICE, "good one"),
        {k: v for k, v in dce_message("2", ALICE, "no time").items() if k != "timestamp"},
        dce_message("3", ALICE, 42),
        {k: v for k, v in dce_message("4", ALICE, "no author").items() if k != "author"},
        dce_message("5", BOB, "good two"),
    ]
    path = write(tmp_path / "general.json", json.dumps(dce_export(records)))
    with pytest.raises(InputError) as failed:
        read_all(path)
    assert str(failed.value) == f"{path}: messages[1].timestamp: missing"

    opts = ReadOptions(on_error="skip")
    got = [m.content for unit in expand_inputs([str(path)]) for m in read_unit(unit, opts)]
    assert got == ["good one", "good two"]
    assert [(e.path, e.field) for e in opts.errors] == [
        (str(path), "messages[1].timestamp"),
        (str(path), "messages[2].content"),
        (str(path), "messages[3].author"),
    ]
    assert "expected a string, got int" in str(opts.errors[1])


def test_discord_json_whole_file_errors_name_file_and_line(tmp_path):
    broken = write(tmp_path / "broken.json", '{"guild": {"id": "1", "name": "G"},\n"channel": {"id": "1",\n  "name": "x",, }\n}')
    with pytest.raises(InputError, match=r"broken\.json:3: malformed JSON"):
        read_all(broken, "discord")
    latin1 = write(tmp_path / "latin1.json", b'{"guild": {"name": "G"},\n"channel": {"name": "caf\xe9"}, "messages": []}')
    with pytest.raises(InputError, match=r"latin1\.json:2: not UTF-8"):
        read_all(latin1, "discord")
    no_messages = write(tmp_path / "nomessages.json", json.dumps({"guild": {"name": "G"}, "channel": {"id": "1", "name": "x"}}))
    with pytest.raises(InputError, match=r"nomessages\.json: messages: missing or not a list"):
        read_all(no_messages)


# --- DiscordChatExporter CSV -------------------------------------------------------------------


def test_discord_csv_multiline_fields_locale_dates_and_part_names(tmp_path):
    rows = (
        "AuthorID,Author,Date,Content,Attachments,Reactions\n"
        '"100","alice#1234","2020-12-25T21:14:00.000+01:00","line one\nline two, with a comma","",""\n'
        '"200","bob","25-Dec-20 09:14 PM","old locale date <:pog:12>","",""\n'
        '"200","bob","12/25/2020 9:15 PM","US slashes","https://cdn.example/a.png",""\n'
        '"300","carol","25/12/2020 21:16","European slashes","",""\n'
        '"300","carol","25-Dec-20 09:17 PM","Joined the server.","",""\n'
    )
    path = write(tmp_path / "Fizz Guild - general [111] [part 2].csv", rows)
    assert _sniff(path) == "discord_csv"
    got = read_all(path)
    assert [m.content for m in got] == [
        "line one\nline two, with a comma", "old locale date :pog:", "US slashes", "European slashes", "Joined the server.",
    ]
    assert [m.ts for m in got] == [utc(2020, 12, 25, 20, 14), utc(2020, 12, 25, 21, 14), utc(2020, 12, 25, 21, 15),
                                   utc(2020, 12, 25, 21, 16), utc(2020, 12, 25, 21, 17)]
    assert (got[0].author_id, got[0].username) == ("100", "alice")  # the legacy discriminator goes
    # No type column: the exporter's own filler sentence is the only trace of a system message.
    assert [m.is_system for m in got] == [False, False, False, False, True]
    assert {m.channel for m in got} == {"Fizz Guild - general [111]"}
    assert {m.format for m in got} == {"discord_csv"}


def test_locale_dates():
    assert parse_locale_date("25-Dec-20 09:14 PM") == utc(2020, 12, 25, 21, 14)
    assert parse_locale_date("12/25/2020 9:14 PM") == utc(2020, 12, 25, 21, 14)
    assert parse_locale_date("01/02/2020 12:05 AM") == utc(2020, 1, 2, 0, 5)  # AM/PM: month first
    assert parse_locale_date("01/02/2020 00:05") == utc(2020, 2, 1, 0, 5)  # 24-hour: day first
    assert parse_locale_date("13/02/2020 9:00 AM") == utc(2020, 2, 13, 9, 0)  # 13 cannot be a month
    assert parse_locale_date("yesterday") is None


def test_discord_csv_bad_rows_name_their_line(tmp_path):
    rows = (
        "AuthorID,Author,Date,Content,Attachments,Reactions\n"
        '"100","alice","2020-12-25T21:14:00+00:00","spans\nthree\nlines","",""\n'
        '"100","alice","sometime","bad date","",""\n'
        '"","bob","2020-12-25T21:15:00+00:00","no author id","",""\n'
        '"200","bob","2020-12-25T21:16:00+00:00","fine","",""\n'
    )
    path = write(tmp_path / "general.csv", rows)
    with pytest.raises(InputError) as failed:
        read_all(path)
    assert str(failed.value).startswith(f"{path}:5: Date: not an ISO 8601 or locale date")
    opts = ReadOptions(on_error="skip")
    got = [m.content for unit in expand_inputs([str(path)]) for m in read_unit(unit, opts)]
    assert got == ["spans\nthree\nlines", "fine"]
    assert [(e.line, e.field) for e in opts.errors] == [(5, "Date"), (6, "AuthorID")]

    wrong = write(tmp_path / "other.csv", "Name,When,Text\nx,y,z\n")
    with pytest.raises(InputError, match=r"other\.csv:1: not a DiscordChatExporter CSV: header lacks Author, Date, Content"):
        read_all(wrong)


# --- Slack -------------------------------------------------------------------------------------


SLACK_USERS = [
    {"id": "U1", "name": "alice", "real_name": "Alice A", "profile": {"display_name": "Ali", "real_name": "Alice A"}},
    {"id": "U2", "name": "bob", "real_name": "Bob B", "profile": {"display_name": "", "real_name": "Bob B"}},
    {"id": "U3", "name": "carol", "profile": {}},
    {"id": "U4", "name": "helper", "is_bot": True, "profile": {"display_name": "Helper"}},
]
SLACK_CHANNELS = [{"id": "C1", "name": "general"}, {"id": "C2", "name": "random"}]


def slack_day(ts_base: int, records: list[dict]) -> str:
    out = []
    for offset, record in enumerate(records):
        out.append({"type": "message", "ts": f"{ts_base + offset}.000{offset}00", **record})
    return json.dumps(out, indent=1)


GENERAL_DAY1 = [
    {"subtype": "channel_join", "user": "U1", "text": "<@U1> has joined the channel"},
    {"user": "U1", "text": "hi <@U2> and <@U3|carol>, see <#C2|random> &amp; <#C9> &lt;3 <!here>"},
    {"user": "U2", "text": "<https://example.com|example.com>"},
    {"user": "U2", "text": "read <https://example.com/docs|the docs> or mail <mailto:a@b.org|a@b.org>",
     "user_profile": {"display_name": "Bobby", "real_name": "Bob B", "name": "bob"}},
    {"subtype": "bot_message", "bot_id": "B1", "username": "deploybot", "text": "",
     "attachments": [{"fallback": "Deploy done", "title": "Deploy", "text": "v1.2 is live"}]},
    {"subtype": "me_message", "user": "U3", "text": "waves"},
    {"subtype": "thread_broadcast", "user": "U3", "text": "also in the channel", "thread_ts": "1577836801.000100"},
    {"subtype": "file_share", "user": "U1", "text": "a file", "files": [{"name": "x.png"}]},
    {"subtype": "channel_topic", "user": "U1", "text": "set the channel topic: fizz", "topic": "fizz"},
    {"user": "U4", "text": "an app user", "bot_id": "B4"},
    {"subtype": "tombstone", "user": "USLACKBOT", "text": "This message was deleted."},
]


def make_slack_export(root: Path) -> Path:
    write(root / "users.json", json.dumps(SLACK_USERS))
    write(root / "channels.json", json.dumps(SLACK_CHANNELS))
    write(root / "general" / "2020-01-01.json", slack_day(1577836800, GENERAL_DAY1))
    write(root / "general" / "2020-01-02.json", slack_day(1577923200, [{"user": "U2", "text": "day two"}]))
    write(root / "random" / "2019-12-31.json", slack_day(1577750400, [{"user": "U3", "text": "earlier, elsewhere"}]))
    return root


def test_slack_folder_users_subtypes_and_markup(tmp_path):
    export = make_slack_export(tmp_path / "export")
    assert day_files(export) == [
        ("general/2020-01-01.json", "general"),
        ("general/2020-01-02.json", "general"),
        ("random/2019-12-31.json", "random"),
    ]
    units = expand_inputs([str(export)])
    assert [(u.format, u.member, u.channel) for u in units] == [
        ("slack", "general/2020-01-01.json", "general"),
        ("slack", "general/2020-01-02.json", "general"),
        ("slack", "random/2019-12-31.json", "random"),
    ]
    got = read_all(export)
    contents = [m.content for m in got]
    assert contents[:11] == [
        "@Ali has joined the channel",
        "hi @Bob B and @carol, see #random & #unknown-channel <3 @here",
        "https://example.com",  # a bare link stays URL-only for the filter
        "read the docs (https://example.com/docs) or mail a@b.org",
        "Deploy\nv1.2 is live",
        "/me waves",
        "also in the channel",
        "a file",
        "set the channel topic: fizz",
        "an app user",
        "This message was deleted.",
    ]
    assert [m.is_system for m in got[:11]] == [True, False, False, False, False, False, False, False, True, False, True]
    assert [m.is_bot for m in got[:11]] == [False, False, False, False, True, False, False, False, False, True, True]
    names = [m.username for m in got[:6]]
    assert names == ["Ali", "Ali", "Bob B", "Bobby", "deploybot", "carol"]  # user_profile wins over users.json
    assert (got[4].author_id, got[1].author_id) == ("B1", "U1")
    assert got[1].ts == 1577836801.0001  # `ts` is a string of epoch seconds
    assert [(m.channel, m.content) for m in got[11:]] == [("general", "day two"), ("random", "earlier, elsewhere")]
    assert {m.format for m in got} == {"slack"}


def test_slack_zip_reads_like_the_folder(tmp_path):
    export = make_slack_export(tmp_path / "export")
    archive = tmp_path / "slack.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(export.rglob("*.json")):
            # Slack's own zips hold the files at the root; many re-zipped ones wrap them in a folder.
            zf.write(file, "Fizz Workspace/" + file.relative_to(export).as_posix())
    assert _sniff(archive) == "slack"
    assert day_files(archive)[0] == ("Fizz Workspace/general/2020-01-01.json", "general")
    from_zip = [(m.channel, m.username, m.content, m.ts, m.is_bot, m.is_system) for m in read_all(archive)]
    from_folder = [(m.channel, m.username, m.content, m.ts, m.is_bot, m.is_system) for m in read_all(export)]
    assert from_zip == from_folder


def test_slack_export_inside_a_folder_is_one_input(tmp_path):
    make_slack_export(tmp_path / "inputs" / "workspace")
    write(tmp_path / "inputs" / "notes" / "#fizz.log", "[10:00] <alice> hello\n")
    units = expand_inputs([str(tmp_path / "inputs")])
    assert [u.format for u in units] == ["irc", "slack", "slack", "slack"]
    assert units[1].path == str(tmp_path / "inputs" / "workspace")


def test_slack_bad_records_are_named_by_day_file_and_field(tmp_path):
    export = make_slack_export(tmp_path / "export")
    write(export / "general" / "2020-01-03.json", json.dumps([
        {"type": "message", "user": "U1", "text": "no ts"},
        {"type": "message", "user": "U1", "text": "ts of a wrong type", "ts": ["1577836800"]},
        {"type": "message", "user": "U1", "text": 42, "ts": "1578009600.0001"},
        {"type": "message", "user": "U1", "text": "fine", "ts": "1578009601.0001"},
    ]))
    write(export / "random" / "2020-01-03.json", '[{"type": "message",\n "ts": "1", "text": oops}]')
    day = f"{export}/general/2020-01-03.json"
    with pytest.raises(InputError) as failed:
        read_all(export)
    assert str(failed.value) == f"{day}: [0].ts: missing"
    opts = ReadOptions(on_error="skip")
    good, whole_file_errors = [], []
    for unit in expand_inputs([str(export)]):
        try:
            good += [m.content for m in read_unit(unit, opts)]
        except InputError as error:  # a day file that is not JSON at all fails as a whole
            whole_file_errors.append(str(error))
    assert "fine" in good and "day two" in good
    assert [(e.path, e.field) for e in opts.errors] == [(day, "[0].ts"), (day, "[1].ts"), (day, "[2].text")]
    assert [e.kind for e in opts.errors] == ["ts: missing", "ts: expected a string of epoch seconds, got list",
                                             "text: expected a string, got int"]
    assert whole_file_errors == [f"{export}/random/2020-01-03.json:2: malformed JSON: Expecting value (column 21)"]


def test_slack_lone_day_file_and_non_export(tmp_path):
    export = make_slack_export(tmp_path / "export")
    with pytest.raises(InputError, match="one day file of a Slack export"):
        expand_inputs([str(export / "general" / "2020-01-01.json")])
    write(tmp_path / "empty_export" / "users.json", "[]")
    with pytest.raises(InputError, match="not a Slack export"):
        expand_inputs([str(tmp_path / "empty_export")])


# --- Telegram ----------------------------------------------------------------------------------


def tg_chat(name, chat_id, messages, kind="private_group"):
    return {"name": name, "type": kind, "id": chat_id, "messages": messages}


FAMILY = [
    {"id": 1, "type": "service", "date": "2021-01-01T10:00:00", "date_unixtime": "1609495200",
     "actor": "Mom", "actor_id": "user1", "action": "create_group", "title": "Family", "text": ""},
    {"id": 2, "type": "message", "date": "2021-01-01T10:01:00", "date_unixtime": "1609495260",
     "from": "Mom", "from_id": "user1", "text": "Happy new year!", "text_entities": []},
    {"id": 3, "type": "message", "date": "2021-01-01T10:02:00", "date_unixtime": "1609495320",
     "from": None, "from_id": "user2", "text": ["see ", {"type": "link", "text": "https://x.org"}, " and ", {"type": "bold", "text": "this"}]},
    {"id": 4, "type": "message", "date": "2021-01-01T10:05:00", "from": "Dad", "from_id": "user3", "text": "no unixtime"},
]


def test_telegram_single_chat(tmp_path):
    path = write(tmp_path / "result.json", json.dumps(tg_chat("Family", 42, FAMILY), indent=1))
    assert _sniff(path) == "telegram"
    got = read_all(path)
    assert [m.content for m in got] == ["create_group", "Happy new year!", "see https://x.org and this", "no unixtime"]
    assert [m.is_system for m in got] == [True, False, False, False]
    # A deleted account (`from: null`) is keyed and named by its id.
    assert [(m.author_id, m.username) for m in got] == [("user1", "Mom"), ("user1", "Mom"), ("user2", "user2"), ("user3", "Dad")]
    assert got[3].ts == utc(2021, 1, 1, 10, 5)  # `date` has no offset: read as UTC
    assert got[1].ts == 1609495260.0
    assert {m.channel for m in got} == {"Family"}
    assert {m.format for m in got} == {"telegram"}


def test_telegram_account_export_names_every_chat(tmp_path):
    account = {
        "about": "Here is the data you requested.",
        "personal_information": {"user_id": 1, "first_name": "Me"},
        "chats": {"about": "", "list": [
            tg_chat("Alice", 7, [FAMILY[1]], kind="personal_chat"),
            tg_chat(None, 8, [FAMILY[2]], kind="personal_chat"),
            tg_chat("Alice", 9, [FAMILY[3]], kind="personal_chat"),
        ]},
        "left_chats": {"about": "", "list": [tg_chat("Old group", 10, [FAMILY[0]])]},
    }
    path = write(tmp_path / "result.json", json.dumps(account, indent=1))
    assert _sniff(path) == "telegram"
    assert [(m.channel, m.content) for m in read_all(path)] == [
        ("Alice (7)", "Happy new year!"),
        ("telegram-8", "see https://x.org and this"),
        ("Alice (9)", "no unixtime"),
        ("Old group", "create_group"),
    ]


def test_telegram_bad_records_are_named_by_field(tmp_path):
    messages = [
        {"id": 1, "type": "message", "date_unixtime": "1609495200", "from": "Mom", "from_id": "user1", "text": 5},
        {"id": 2, "type": "message", "from": "Mom", "from_id": "user1", "text": "no date"},
        {"id": 3, "type": "message", "date_unixtime": "1609495300", "from": "Mom", "from_id": "user1", "text": ["ok", 7]},
        {"id": 4, "type": "message", "date_unixtime": "1609495400", "from": "Mom", "from_id": "user1", "text": "good"},
    ]
    path = write(tmp_path / "result.json", json.dumps(tg_chat("Family", 42, messages)))
    with pytest.raises(InputError, match=r"result\.json: messages\[0\]\.text: expected a string or a list, got int"):
        read_all(path)
    opts = ReadOptions(on_error="skip")
    got = [m.content for unit in expand_inputs([str(path)]) for m in read_unit(unit, opts)]
    assert got == ["good"]
    assert [e.field for e in opts.errors] == ["messages[0].text", "messages[1].date", "messages[2].text[1]"]


# --- IRC ---------------------------------------------------------------------------------------


IRC_SHAPES = """\
[23:58] <alice> hello there
[23:58:30] <@Bob> hi alice
[23:59]  * carol waves at everyone
=== dave [~d@host.example] has joined #Fizz
-!- erin [e@198.51.100.7] has quit [Bye]
--> frank (f@h) has joined #fizz
<-- gina (g@h) has left #fizz
=== carol is now known as caroline
[23:59] -spambot:#fizz- buy cheap stuff
[23:59] (spammer/#fizz) buy more stuff
[23:59] <ubotu> Factoid: ubuntu is an OS
[23:59] <caroline>
[00:01] <alice> past midnight
2020-01-03T08:00:00 <bob> full date line
[2020-01-04 09:00:00+02:00] <bob> bracketed date with offset
"""


def test_irc_line_shapes(tmp_path):
    path = write(tmp_path / "one" / "fizz-2020-01-01.log", IRC_SHAPES)
    assert _sniff(path) == "irc"
    got = read_all(path)
    rows = [(m.username, m.content, m.is_system, m.is_bot) for m in got]
    assert rows == [
        ("alice", "hello there", False, False),
        ("Bob", "hi alice", False, False),
        ("carol", "/me waves at everyone", False, False),
        ("dave", "dave [~d@host.example] has joined #Fizz", True, False),
        ("erin", "erin [e@198.51.100.7] has quit [Bye]", True, False),
        ("frank", "frank (f@h) has joined #fizz", True, False),
        ("gina", "gina (g@h) has left #fizz", True, False),
        ("carol", "carol is now known as caroline", True, False),
        ("spambot", "buy cheap stuff", False, True),  # notices are bots and spam
        ("spammer", "buy more stuff", False, True),
        ("ubotu", "Factoid: ubuntu is an OS", False, True),  # a bot by its nick
        ("caroline", "", False, False),
        ("alice", "past midnight", False, False),
        ("bob", "full date line", False, False),
        ("bob", "bracketed date with offset", False, False),
    ]
    assert got[1].author_id == "bob"  # the op prefix goes, and nicks are case-insensitive
    assert [m.ts for m in got] == [
        utc(2020, 1, 1, 23, 58), utc(2020, 1, 1, 23, 58, 30), *[utc(2020, 1, 1, 23, 59)] * 10,
        utc(2020, 1, 2, 0, 1),  # time went backwards: the next day
        utc(2020, 1, 3, 8, 0), utc(2020, 1, 4, 7, 0),
    ]
    assert {m.channel for m in got} == {"#fizz"}  # named by its joins, lower-cased
    assert {m.format for m in got} == {"irc"}


def test_irc_irssi_markers_and_bare_times(tmp_path):
    log = (
        "--- Log opened Tue Jan 07 10:00:00 2020\n"
        "10:00 -!- alice [a@h] has joined #fizz\n"
        "10:00 <alice> one\n"
        "10:02  * bob nods\n"
        "--- Day changed Wed Jan 08 2020\n"
        "00:05 <bob> two\n"
        "--- Log closed Wed Jan 08 00:10:00 2020\n"
    )
    path = write(tmp_path / "irssi" / "#fizz.log", log)
    assert _sniff(path) == "irc"
    got = read_all(path)
    assert [(m.content, m.ts) for m in got] == [
        ("alice [a@h] has joined #fizz", utc(2020, 1, 7, 10, 0)),
        ("one", utc(2020, 1, 7, 10, 0)),
        ("/me nods", utc(2020, 1, 7, 10, 2)),
        ("two", utc(2020, 1, 8, 0, 5)),  # the marker set the day: no extra rollover
    ]


def test_irc_twelve_hour_clock_wraps_half_a_day(tmp_path):
    # The old Ubuntu logger: a 12-hour clock without AM/PM, 11:59 -> 00:00 at noon.
    old = write(tmp_path / "a" / "2005-02-08.log", "[11:58] <a> morning\n[12:30] <b> noon\n[01:00] <a> afternoon\n")
    assert [m.ts for m in read_all(old)] == [utc(2005, 2, 8, 11, 58), utc(2005, 2, 8, 12, 30), utc(2005, 2, 8, 13, 0)]
    # A file that has shown 23 o'clock has a 24-hour clock: the same wrap is midnight.
    new = write(tmp_path / "b" / "2012-02-08.log", "[23:58] <a> night\n[00:30] <b> morning\n")
    assert [m.ts for m in read_all(new)] == [utc(2012, 2, 8, 23, 58), utc(2012, 2, 9, 0, 30)]


def test_irc_channel_sources(tmp_path):
    plain = "[10:00] <alice> hi\n"
    assert {m.channel for m in read_all(write(tmp_path / "a" / "2020-01-01.log", plain))} == {"irc"}
    assert {m.channel for m in read_all(write(tmp_path / "b" / "#Fizz.2020-01-01.log", plain))} == {"#fizz"}
    assert {m.channel for m in read_all(write(tmp_path / "#chan" / "2020-01-01.log", plain))} == {"#chan"}
    assert {m.channel for m in read_all(tmp_path / "a" / "2020-01-01.log", irc_channel="#given")} == {"#given"}
    # A pasted join inside a message does not name the channel.
    pasted = "[10:00] <alice> * x has joined #other\n-bot:#real- notice\n"
    assert {m.channel for m in read_all(write(tmp_path / "c" / "2020-01-01.log", pasted))} == {"#real"}
    # A day file that names no channel takes the one its folder's other logs name.
    write(tmp_path / "d" / "2020-01-01.log", "=== x [x@h] has joined #ubuntu\n[10:00] <x> hi\n")
    quiet = write(tmp_path / "d" / "2020-01-02.log", plain)
    assert {m.channel for m in read_all(quiet)} == {"#ubuntu"}


def test_irc_bad_lines_are_named_by_line(tmp_path):
    path = write(tmp_path / "x" / "2020-01-01.log", b"[10:00] <alice> hi\nthis is not a log line\n\n[10:01] <bob> caf\xe9\n[10:02] <carol> ok\n")
    assert _sniff(path) == "irc"  # a bad byte after the first line is the reader's to report
    with pytest.raises(InputError) as failed:
        read_all(path)
    assert str(failed.value).startswith(f"{path}:4: not UTF-8")  # decoding comes before parsing
    opts = ReadOptions(on_error="skip")
    got = [m.content for unit in expand_inputs([str(path)]) for m in read_unit(unit, opts)]
    assert got == ["hi", "ok"]
    assert sorted((e.line, e.reason.split(" (")[0].split(":")[0]) for e in opts.errors) == [
        (2, "not an IRC line of a known shape"), (4, "not UTF-8")]

    clean = write(tmp_path / "y" / "2020-01-01.log", "[10:00] <alice> hi\n<<garbage\n")
    with pytest.raises(InputError, match=r"2020-01-01\.log:2: not an IRC line of a known shape: '<<garbage'"):
        read_all(clean)


# --- format detection and whole-file errors ----------------------------------------------------


def test_empty_and_unknown_files(tmp_path):
    for name in ("empty.json", "empty.log", "empty.csv"):
        write(tmp_path / name, "  \n")
        with pytest.raises(InputError, match=rf"{name}: empty file"):
            expand_inputs([str(tmp_path / name)])
    for fmt, name in (("irc", "empty.log"), ("discord_csv", "empty.csv"), ("telegram", "empty.json")):
        with pytest.raises(InputError, match=rf"{name}: empty file"):
            read_all(tmp_path / name, fmt)
    write(tmp_path / "notes.bin", "just some words\n")
    with pytest.raises(InputError, match=r"notes\.bin:1: unknown export format"):
        expand_inputs([str(tmp_path / "notes.bin")])


@pytest.mark.parametrize(
    ("fmt", "name", "data", "where"),
    [
        ("discord_csv", "g.csv", b"AuthorID,Author,Date,Content,Attachments,Reactions\n1,a,2020-01-01,caf\xe9,,\n", ":2: not UTF-8"),
        ("telegram", "result.json", b'{"name": "x",\n"messages": [\n{"text": "caf\xe9"}]}', ":3: not UTF-8"),
        ("telegram", "result.json", b'{"name": "x",\n"messages": [\n{"text": }]}', ":3: malformed JSON"),
        ("telegram", "result.json", b'{"name": "x"}', ": messages: neither"),
        ("discord", "c.json", b'{"guild": {}, "channel": {"id": "1"}, "messages": []}', ": channel.name: missing"),
    ],
)
def test_whole_file_errors_name_file_and_line_or_field(tmp_path, fmt, name, data, where):
    path = write(tmp_path / name, data)
    with pytest.raises(InputError) as failed:
        read_all(path, fmt)
    assert str(failed.value).startswith(str(path) + where)


def test_sniff_tells_irc_variants_from_seed(tmp_path):
    cases = {
        "a.dat": "[2020-01-01 12:00:00] <alice> hi\n",
        "b.dat": "2020-01-01T12:00:00 <alice> hi\n",
        "c.dat": "--- Log opened Tue Jan 07 10:00:00 2020\n",
        "d.dat": "12:00 <alice> hi\n",
        "e.dat": "=== alice [a@h] has joined #x\n",
    }
    for name, text in cases.items():
        assert _sniff(write(tmp_path / name, text)) == "irc", name
    assert _sniff(write(tmp_path / "seed.json", '[{"username": "a", "content": "b", "timestamp": 1}]')) == "seed"
    assert _sniff(write(tmp_path / "seed.jsonl", '{"username": "a", "content": "b", "timestamp": 1}\n')) == "seed"


# --- the real Ubuntu logs ----------------------------------------------------------------------


def test_real_ubuntu_logs_read_without_errors():
    if not UBUNTU_LOGS.is_dir():
        pytest.skip(f"the Ubuntu IRC logs are not at {UBUNTU_LOGS}")
    units = expand_inputs([str(UBUNTU_LOGS)])
    assert len(units) == 153 and {u.format for u in units} == {"irc"}
    opts = ReadOptions(on_error="fail")
    per_file: dict[str, list[Message]] = defaultdict(list)
    for unit in units:
        per_file[unit.path] = list(read_unit(unit, opts))
    assert opts.errors == []
    messages = [m for ms in per_file.values() for m in ms]
    assert len(messages) > 200_000
    assert {m.channel for m in messages} == {"#ubuntu"}
    for path, ms in per_file.items():
        assert all(a.ts <= b.ts for a, b in zip(ms, ms[1:])), path
        # The files are excerpts of a day or two: wrongly added days would show here.
        assert ms[-1].ts - ms[0].ts < 2 * 86400, path
    bots = {m.username.lower() for m in messages if m.is_bot}
    assert {"ubotu", "ubottu"} <= bots
    notices = [m for m in messages if m.content.startswith("All you ladies")]
    assert notices and all(m.is_bot for m in notices)
    assert not any(m.is_bot for m in messages if m.username in ("crimsun", "Seveas", "Dr_Willis"))
    system = [m for m in messages if m.is_system]
    assert len(system) > 20_000 and all("has joined" not in m.content for m in messages if not m.is_system and m.username == "L0sT")
    # The old logger's `=== nick does something` lines are /me actions, not system events.
    actions = [m for m in messages if m.content.startswith("/me ")]
    assert len(actions) > 1000
    # The 12-hour clock of the early logs: 11:55 -> 00:05 is ten minutes, not half a day.
    early = per_file[str(UBUNTU_LOGS / "2004-12-25.train-c.log")]
    assert max(b.ts - a.ts for a, b in zip(early, early[1:])) < 3600
