"""Real-shaped samples of every client and format fizzbot reads, as people have them: IRC clients,
bouncers and bots; Slack exports old and new; every DiscordChatExporter layout; Telegram forums;
WhatsApp on Android and iOS; Matrix rooms exported by Element. Each is detected without `--format`
and read to the rows the sample means."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from export_samples import (
    ANDROID_12H_US,
    ANDROID_24H,
    CLIENTS,
    DCE_MESSAGES,
    EGGDROP,
    GERMAN,
    HEXCHAT,
    IOS,
    IRSSI,
    MIRC,
    TEXTUAL,
    WEECHAT,
    ZNC,
    dce,
    dce_message,
    element_export,
    SLACK_2016_DAY,
    make_2016_export,
    telegram_forum,
    utc,
    write,
)
from fizzbot.data.formats import _sniff, discord, expand_inputs, read_unit
from fizzbot.data.messages import InputError, Message, ReadOptions, parse_timestamp


def read(path: Path, fmt: str = "auto", **options) -> tuple[list[Message], ReadOptions]:
    opts = ReadOptions(**options)
    return [m for unit in expand_inputs([str(path)], fmt) for m in read_unit(unit, opts)], opts


def said(messages: list[Message]) -> list[tuple[str, str]]:
    """(username, content) of the messages a model would learn from: no system events."""
    return [(m.username, m.content) for m in messages if not m.is_system]


# --- IRC clients, bouncers and bots -----------------------------------------------------------------

@pytest.mark.parametrize("client", CLIENTS)
def test_irc_client_logs_are_detected_and_read(tmp_path, client):
    name, text, speech, first_ts, channel = CLIENTS[client]
    path = write(tmp_path / name, text.encode("utf-8"))
    assert _sniff(path) == "irc"
    messages, opts = read(path)
    assert said(messages) == speech
    assert messages[0].ts == first_ts
    assert {m.channel for m in messages} == {channel}
    assert all(type(m.ts) is float for m in messages)
    assert all(a.ts <= b.ts for a, b in zip(messages, messages[1:]))
    assert opts.errors == [] and opts.warnings == []
    # The same through `--format irc`.
    assert said(read(path, "irc")[0]) == speech


def test_irc_client_details(tmp_path):
    """Times, bots and system events the samples above mean, client by client."""
    weechat, _ = read(write(tmp_path / "w" / "irc.libera.#rust.weechatlog", WEECHAT))
    assert [m.is_system for m in weechat] == [True, False, False, False, True, False, False, True]
    assert weechat[6].ts == utc(2018, 5, 30, 0, 0, 10)  # the date is on every line
    irssi, _ = read(write(tmp_path / "i" / "#rust.log", IRSSI))
    assert irssi[-1].ts == utc(2018, 5, 30, 0, 5)  # `--- Day changed` moved on the day
    textual, _ = read(write(tmp_path / "t" / "2018-05-29.txt", TEXTUAL))
    assert textual[2].ts == utc(2018, 5, 29, 21, 20, 41)  # the +0200 offset honoured
    assert [m.is_system for m in textual] == [True, False, False, False, True]
    znc, _ = read(write(tmp_path / "z" / "#rust" / "2018-05-29.log", ZNC))
    assert [m.is_bot for m in znc if not m.is_system] == [False, False, True]
    hexchat, _ = read(write(tmp_path / "h" / "#rust.log", HEXCHAT))
    assert [m.is_system for m in hexchat] == [True, False, False, False, True, True]
    mirc, _ = read(write(tmp_path / "m" / "#rust.libera.log", MIRC))
    assert [(m.is_system, m.content) for m in mirc][:2] == [(True, "Now talking in #rust"), (True, "Topic is 'the rust channel'")]
    eggdrop, _ = read(write(tmp_path / "e" / "#rust.log.29May2018", EGGDROP))
    assert [m.is_system for m in eggdrop] == [True, False, False, True, True, True]


def test_hexchat_takes_its_year_from_the_path_and_moves_on_at_new_year(tmp_path):
    log = "Dec 31 23:59:00 <a>\tlast of the year\nJan 01 00:01:00 <b>\tfirst of the next\n"
    messages, opts = read(write(tmp_path / "logs" / "#x.2019-12-31.log", log))
    assert [m.ts for m in messages] == [utc(2019, 12, 31, 23, 59), utc(2020, 1, 1, 0, 1)]
    assert opts.warnings == []
    # No year anywhere: read, in order, with a warning that names the file.
    undated, opts = read(write(tmp_path / "nowhere" / "#x.log", log))
    assert [m.content for m in undated] == ["last of the year", "first of the next"]
    [warning] = opts.warnings
    assert warning.path.endswith("#x.log") and "no date" in warning.reason


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("#chan.20200101.log", utc(2020, 1, 1, 10)),
        ("#chan_2020.01.02.log", utc(2020, 1, 2, 10)),
        ("libera_#chan_20200103.log", utc(2020, 1, 3, 10)),
        ("2013/01/04/#chan.txt", utc(2013, 1, 4, 10)),
        ("#chan/2020-01-05.log", utc(2020, 1, 5, 10)),
        ("#chan.log.06Jan2020", utc(2020, 1, 6, 10)),
    ],
)
def test_irc_dates_come_from_the_file_name_or_its_folders(tmp_path, name, expected):
    messages, opts = read(write(tmp_path / "logs" / name, "[10:00] <alice> hi\n[10:01] <bob> hello\n"))
    assert messages[0].ts == expected and opts.warnings == []


def test_a_folder_of_day_files_does_not_merge_its_days(tmp_path):
    for day in (1, 2, 3):
        write(tmp_path / "#chan" / f"#chan.2020010{day}.log", f"[10:00] <alice> day {day}\n[23:00] <bob> late {day}\n")
    messages, _ = read(tmp_path / "#chan")
    assert [m.content for m in sorted(messages, key=Message.sort_key)] == [
        "day 1", "late 1", "day 2", "late 2", "day 3", "late 3"]


def test_irc_in_a_local_time_zone(tmp_path):
    path = write(tmp_path / "#chan" / "2020-07-01.log", "[10:00] <alice> summer\n")
    assert read(path, timezone="Europe/Berlin")[0][0].ts == utc(2020, 7, 1, 8, 0)  # CEST is UTC+2
    winter = write(tmp_path / "#chan" / "2020-01-01.log", "[10:00] <alice> winter\n")
    assert read(winter, timezone="Europe/Berlin")[0][0].ts == utc(2020, 1, 1, 9, 0)
    textual = write(tmp_path / "t" / "x.txt", "[2018-05-29T21:20:37+0000] <talchas> exact\n")
    assert read(textual, timezone="Europe/Berlin")[0][0].ts == utc(2018, 5, 29, 21, 20, 37)  # offsets win


def test_epoch_numbers_of_any_precision():
    where = {"path": "x", "line": 1}
    for value in (1_590_787_237, 1_590_787_237_000, 1_590_787_237_000_000, 1_590_787_237_000_000_000, "1590787237000000"):
        assert parse_timestamp(value, **where) == 1_590_787_237.0, value
    for bad in (float("nan"), float("inf"), 10**30, "1e400", -5e12 * 1e9):
        with pytest.raises(InputError):
            parse_timestamp(bad, **where)


def test_irc_and_textual_logs_go_through_prepare(tmp_path):
    """The window stage once crashed on irssi's and Textual's integer timestamps."""
    from fizzbot.config import DataConfig
    from fizzbot.data.pipeline import prepare

    write(tmp_path / "in" / "irssi" / "#rust.log", IRSSI + IRSSI.replace("2018", "2019"))
    write(tmp_path / "in" / "textual" / "#rust" / "2018-05-29.txt", TEXTUAL)
    write(tmp_path / "in" / "weechat" / "irc.libera.#go.weechatlog", WEECHAT)
    summary = prepare(DataConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "out"), val_split=0),
                      use_ray=False, report=False)
    assert summary.train_examples > 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert all(isinstance(r["ts"], float) for r in rows)


# --- Slack ---------------------------------------------------------------------------------------------


def test_a_2016_slack_export_reads_whole(tmp_path):
    export = make_2016_export(tmp_path / "Fizz Slack export Mar 27 2016")
    messages, opts = read(export, on_error="skip_messages")
    rows = [(m.channel, m.username, m.content, m.attachment, m.is_bot, m.is_system) for m in messages]
    thread = "general/thread-1459096880.000008"
    assert rows == [
        ("general", "Alice", "@Alice has joined the channel", None, False, True),
        ("general", "Alice", "", "image", False, False),  # an upload with no words: attachment-only
        ("general", "bobby", "looks great", None, False, False),  # the file_comment's author and words
        ("general", "bobby", "the paper", None, False, False),
        ("general", "travis", "build passed", None, True, False),
        ("general", "bobby", "/me dances", None, False, False),
        ("general", "Alice", "question?", None, False, False),
        (thread, "Alice", "question?", None, False, False),  # the parent opens its thread
        (thread, "bobby", "answer", None, False, False),
        ("general", "Alice", "@Alice set the channel topic: x", None, False, True),
        ("general", "Alice", "@Alice pinned a message", None, False, True),
        ("general", "Alice", "", None, False, True),
        (thread, "Alice", "thanks!", None, False, False),
        ("general", "Bob the builder", "see @Alice :tada:", None, False, False),
        ("general", "Jira", "FIZZ-1", None, True, False),
        ("general", "Alice", "", "video", False, False),
        ("general", "USLACKBOT", "This message was deleted.", None, True, True),
        (thread, "bobby", "also to the channel", None, False, False),
    ]
    # The subtype from the future is skipped and counted, not fatal.
    [error] = opts.errors
    assert error.kind == "unknown Slack subtype 'a_subtype_from_the_future'"
    assert str(error).endswith("general/2016-03-27.json: [11].subtype: unknown subtype 'a_subtype_from_the_future'")
    with pytest.raises(InputError, match=r"\[11\]\.subtype: unknown subtype"):
        read(export, on_error="fail")


# --- DiscordChatExporter -----------------------------------------------------------------------------


def test_discord_json_of_every_exporter_version(tmp_path):
    path = write(tmp_path / "G - Text - general [111].json", dce(DCE_MESSAGES))
    messages, opts = read(path, on_error="skip_messages")
    assert [(m.username, m.content, m.attachment, m.is_system, m.is_bot) for m in messages] == [
        ("Ali", "hello", None, False, False),
        ("Ali", "", "image", False, False),
        ("Ali", "", "sticker", False, False),
        ("Ali", "@Ali cute", None, False, False),
        ("Ali", "Started a thread.", None, True, False),
        ("Bot", "Poll\nvote now", None, False, True),  # type 20: a slash command's reply
        ("Ali", "pinned", None, True, False),
        ("bob", "old exporter: no nickname", None, False, False),
    ]
    assert [m.msg_id for m in messages][:2] == ["1", "2"]
    assert [e.kind for e in opts.errors] == ["unknown Discord type 'SomethingNew'"]


def test_discord_forum_posts_and_threads_are_channels_of_their_own(tmp_path):
    write(tmp_path / "G - help-forum - How do I [333].json",
          dce([dce_message(1, "", "ThreadStarterMessage"), dce_message(2, "my question")],
              id="333", type="GuildPublicThread", categoryId="222", category="help-forum", name="How do I"))
    messages, _ = read(tmp_path)
    assert {m.channel for m in messages} == {"G/help-forum/How do I [333]"}
    assert [m.is_system for m in messages] == [True, False]


def test_discord_json_is_streamed_above_a_size(tmp_path, monkeypatch):
    path = write(tmp_path / "general.json", "\ufeff" + dce(DCE_MESSAGES * 50))
    whole, _ = read(path, on_error="skip_messages")
    monkeypatch.setattr(discord, "STREAM_ABOVE_BYTES", 0)
    streamed, _ = read(path, on_error="skip_messages")
    assert [(m.channel, m.content, m.ts, m.attachment, m.msg_id) for m in streamed] == \
        [(m.channel, m.content, m.ts, m.attachment, m.msg_id) for m in whole]
    assert len(streamed) == 8 * 50
    # A document broken mid-way: the file and the message reached are named.
    text = dce(DCE_MESSAGES)
    broken = write(tmp_path / "broken.json", text[: text.index('"id": "5"')] + '"id": 5,, }')
    with pytest.raises(InputError, match=r"broken\.json: messages\[4\]: malformed JSON"):
        read(broken, "discord")
    no_messages = write(tmp_path / "nomessages.json", json.dumps({"guild": {}, "channel": {"id": "1", "name": "x"}}))
    with pytest.raises(InputError, match=r"nomessages\.json: messages: missing or not a list"):
        read(no_messages, "discord")


def test_discord_json_streaming_memory_stays_flat(tmp_path, monkeypatch):
    """A 16 MB export streamed holds one message at a time (peak traced memory far below the file)."""
    import tracemalloc

    big = [dce_message(i % 60, "x" * 2000) for i in range(8_000)]
    path = write(tmp_path / "big.json", dce(big))
    assert path.stat().st_size > 16_000_000
    monkeypatch.setattr(discord, "STREAM_ABOVE_BYTES", 1 << 20)
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_unit(expand_inputs([str(path)])[0], ReadOptions()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 8_000
    assert peak < 3_000_000, peak


@pytest.mark.parametrize(
    ("header", "rows"),
    [
        # 2.x: semicolons, a trailing one, no author id, `name#1234`, the default `dd-MMM-yy hh:mm tt` dates.
        ("Author;Date;Content;Attachments;",
         ['"alice#1234";"01-Mar-21 10:01 AM";"hello";"";', '"bob#0001";"01-Mar-21 10:02 AM";"";"https://cdn/x.png";']),
        # Later 2.x: the author id first, reactions last, still semicolons.
        ("AuthorID;Author;Date;Content;Attachments;Reactions;",
         ['"100";"alice#1234";"01-Mar-21 10:01 AM";"hello";"";"";', '"200";"bob#0001";"01-Mar-21 10:02 AM";"";"https://cdn/x.png";"";']),
        # Current: commas, ISO dates.
        ("AuthorID,Author,Date,Content,Attachments,Reactions",
         ['"100","alice","2021-03-01T10:01:00.000+00:00","hello","",""', '"200","bob","2021-03-01T10:02:00+00:00","","https://cdn/x.png",""']),
    ],
)
def test_discord_csv_of_every_exporter_version(tmp_path, header, rows):
    path = write(tmp_path / "G - general [111].csv", "\n".join([header, *rows]) + "\n")
    assert _sniff(path) == "discord_csv"
    messages, opts = read(path)
    assert [(m.username, m.content, m.attachment, m.ts) for m in messages] == [
        ("alice", "hello", None, utc(2021, 3, 1, 10, 1)), ("bob", "", "image", utc(2021, 3, 1, 10, 2))]
    assert len({m.author_id for m in messages}) == 2 and opts.errors == []


# --- Telegram ------------------------------------------------------------------------------------------


def test_telegram_forum_topics_forwards_media_and_service_messages(tmp_path):
    chat = telegram_forum()
    path = write(tmp_path / "result.json", json.dumps(chat, ensure_ascii=False))
    messages, opts = read(path, on_error="skip_messages")
    assert [(m.channel, m.username, m.content, m.attachment, m.is_system) for m in messages] == [
        ("Dev Team", "Ann", "topic_created", None, True),
        ("Dev Team", "Ann", "in general", None, False),
        ("Dev Team/Backend", "Ann", "api design?", None, False),
        ("Dev Team/Backend", "Ben", "REST", None, False),  # a reply to a message in the topic
        ("Dev Team/Backend", "Ann", "", "forwarded", False),
        ("Dev Team", "Ann", "", "sticker", False),
        ("Dev Team", "Ann", "", "image", False),
        ("Dev Team", "Ann", "", "audio", False),
        ("Dev Team", "Ann", "a photo with a caption", None, False),
        ("Dev Team", "Ann", "pin_message", None, True),
    ]
    assert [e.kind for e in opts.errors] == ["unknown Telegram type 'unsupported_kind'"]


# --- WhatsApp ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("WhatsApp Chat with Family.txt", ANDROID_24H, [
            ("Ann", "Good night everyone", None, utc(2020, 12, 9, 23, 51)),
            ("Ben", "Night!\nit's late\nreally", None, utc(2020, 12, 9, 23, 52)),
            ("Ann", "", "media", utc(2020, 12, 13, 8, 0)),
            ("+44 7700 900123", "who is this?", None, utc(2020, 12, 13, 8, 1)),
            ("Ben", "the view from here", "image", utc(2020, 12, 13, 8, 4)),
            ("Ann", "fixed it", None, utc(2020, 12, 13, 8, 5)),
        ]),
        ("WhatsApp Chat with Family.txt", ANDROID_12H_US, [
            ("Ann", "Good night everyone", None, utc(2020, 12, 9, 23, 51)),
            ("Ben", "Night!", None, utc(2020, 12, 9, 23, 52)),
            ("Ann", "", "media", utc(2020, 12, 13, 8, 0)),
        ]),
        ("_chat.txt", IOS, [
            ("Ann", "Good night everyone", None, utc(2020, 12, 9, 23, 51, 12)),
            ("Ben", "Night!\nit's late", None, utc(2020, 12, 9, 23, 52, 30)),
            ("Ann", "", "image", utc(2020, 12, 13, 8, 0, 1)),
            ("Ben", "", "sticker", utc(2020, 12, 13, 8, 0, 5)),
            ("Ann", "", "image", utc(2020, 12, 13, 8, 2)),
        ]),
        ("WhatsApp-Chat mit Family.txt", GERMAN, [
            ("Ann", "Gute Nacht", None, utc(2020, 12, 9, 23, 51)),
            ("Ben", "Morgen", None, utc(2020, 12, 13, 8, 0)),
        ]),
    ],
)
def test_whatsapp_exports_of_each_platform_and_locale(tmp_path, name, text, expected):
    path = write(tmp_path / name, text)
    assert _sniff(path) == "whatsapp"
    messages, opts = read(path)
    speech = [(m.username, m.content, m.attachment, m.ts) for m in messages if not m.is_system]
    assert speech == expected
    assert opts.errors == []
    assert {m.channel for m in messages} == {"Family"} if name != "_chat.txt" else {"_chat"}


def test_whatsapp_system_lines_and_the_zip_the_app_shares(tmp_path):
    messages, _ = read(write(tmp_path / "WhatsApp Chat with Family.txt", ANDROID_24H))
    system = [m.content for m in messages if m.is_system]
    assert system[0].startswith("Messages and calls are end-to-end encrypted")
    assert 'Ann changed the subject from "Family: old" to "Family"' in system
    assert "This message was deleted" in system
    archive = tmp_path / "WhatsApp Chat - Family.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("_chat.txt", IOS)
        zf.writestr("00000012-PHOTO-2020-12-13-08-02-00.jpg", b"\xff\xd8\xff")
    assert _sniff(archive) == "whatsapp"
    zipped, _ = read(archive)
    assert {m.channel for m in zipped} == {"Family"}
    assert [m.content for m in zipped if not m.is_system][:2] == ["Good night everyone", "Night!\nit's late"]
    # In local time, as the phone wrote it.
    berlin, _ = read(write(tmp_path / "x" / "WhatsApp Chat with Family.txt", GERMAN), timezone="Europe/Berlin")
    assert berlin[0].ts == utc(2020, 12, 9, 22, 51)


def test_whatsapp_date_order_from_the_file(tmp_path):
    # Nothing over 12 and a 24-hour clock: the order under which the dates run forwards.
    month_first = "1/2/21, 09:00 - Ann: a\n1/3/21, 09:00 - Ann: b\n2/1/21, 09:00 - Ann: c\n"
    assert [m.ts for m in read(write(tmp_path / "a.txt", month_first))[0]] == [
        utc(2021, 1, 2, 9), utc(2021, 1, 3, 9), utc(2021, 2, 1, 9)]
    day_first = "1/2/21, 09:00 - Ann: a\n2/2/21, 09:00 - Ann: b\n1/3/21, 09:00 - Ann: c\n"
    assert [m.ts for m in read(write(tmp_path / "b.txt", day_first))[0]] == [
        utc(2021, 2, 1, 9), utc(2021, 2, 2, 9), utc(2021, 3, 1, 9)]
    iso = "2021-02-01, 09:00 - Ann: a\n"
    assert read(write(tmp_path / "c.txt", iso))[0][0].ts == utc(2021, 2, 1, 9)


def test_a_text_file_that_is_not_whatsapp_is_refused_whole(tmp_path):
    path = write(tmp_path / "notes.txt", "1/2/21, 09:00 - Ann: a\n")
    path.write_text("Dear diary\nnothing happened\n")
    with pytest.raises(InputError, match=r"notes\.txt:1: not a whatsapp file: no record could be read"):
        read(path, "whatsapp", on_error="skip_messages")


# --- Matrix / Element ---------------------------------------------------------------------------------


def test_an_element_room_export(tmp_path):
    export = element_export()
    path = write(tmp_path / "matrix - Fizz Room - 2021-05-01.json", json.dumps(export, ensure_ascii=False))
    assert _sniff(path) == "matrix"
    messages, opts = read(path, on_error="skip_messages")
    assert [(m.channel, m.username, m.content, m.attachment, m.is_bot) for m in messages if not m.is_system] == [
        ("Fizz Room", "Alice A", "hello", None, False),
        ("Fizz Room/thread-$e2", "Alice A", "hello", None, False),  # the root opens its thread
        ("Fizz Room", "Bob", "hi back", None, False),  # the quoted parent removed
        ("Fizz Room", "Alice A", "/me waves", None, False),
        ("Fizz Room", "bot", "build passed", None, True),
        ("Fizz Room", "Alice A", "fixed", None, False),  # the edit applied to its original
        ("Fizz Room", "Bob", "", "image", False),
        ("Fizz Room", "Bob", "", "sticker", False),
        ("Fizz Room/thread-$e2", "Alice A", "in a thread", None, False),
    ]
    assert [m.author_id for m in messages if not m.is_system][:3] == ["@alice:example.org"] * 2 + ["@bob:example.org"]
    assert sorted(e.kind for e in opts.errors) == ["encrypted event", "unknown Matrix type 'com.example.custom'"]
    assert messages[2].ts == 1620000002.0 and messages[2].msg_id == "$e2"


# --- detection of everything without --format -----------------------------------------------------------


def test_every_sample_is_detected_in_one_folder(tmp_path):
    for client, (name, text, *_rest) in CLIENTS.items():
        write(tmp_path / "in" / client / name, text.encode("utf-8"))
    write(tmp_path / "in" / "wa" / "WhatsApp Chat with Family.txt", ANDROID_24H)
    write(tmp_path / "in" / "wa" / "IMG-20201213-WA0001.jpg", b"\xff\xd8\xff")  # media beside a chat: not input
    write(tmp_path / "in" / "dc" / "general.json", dce(DCE_MESSAGES[:2]))
    make_2016_export(tmp_path / "in" / "slack")
    units = expand_inputs([str(tmp_path / "in")])
    formats = sorted({u.format for u in units})
    assert formats == ["discord", "irc", "slack", "whatsapp"]
    assert sum(u.format == "irc" for u in units) == len(CLIENTS)


def test_a_slack_export_without_its_listings_is_still_one_export(tmp_path):
    """Some export tools write the channel folders only: names then come from each message's profile."""
    root = tmp_path / "export"
    write(root / "general" / "2016-03-27.json", json.dumps(SLACK_2016_DAY[:2]))
    write(root / "random" / "2016-03-28.json", json.dumps([
        {"type": "message", "user": "U1", "text": "hi", "ts": "1459183300.000001", "user_profile": {"real_name": "Alice"}}]))
    units = expand_inputs([str(root)])
    assert [(u.format, u.channel) for u in units] == [("slack", "general"), ("slack", "random")]
    messages, _ = read(root)
    assert [(m.channel, m.username, m.content) for m in messages][-1] == ("random", "Alice", "hi")


@pytest.mark.parametrize(
    "line",
    [
        "rust 2018-05-29 [21:20:37] <talchas> text",
        "#rust 2018-05-29 21:20:37 <talchas> text",
        "#rust [21:20:37] <talchas> text",
        "2018-05-29 [21:20:37] <talchas> text",
        "[2018-05-29 21:20:37] <talchas> text",
    ],
)
def test_a_channel_and_or_a_date_before_the_time(tmp_path, line):
    path = write(tmp_path / "logs" / "2018-05-29.log", line + "\n")
    assert _sniff(path) == "irc"
    [message], opts = read(path)
    assert (message.username, message.content, message.ts) == ("talchas", "text", utc(2018, 5, 29, 21, 20, 37))
    assert message.channel in ("#rust", "irc") and opts.errors == []


def test_every_attachment_kind_has_a_configurable_placeholder():
    from fizzbot.config import AttachmentPlaceholders
    from fizzbot.data.messages import ATTACHMENT_KINDS

    assert set(ATTACHMENT_KINDS) == set(AttachmentPlaceholders.model_fields)
