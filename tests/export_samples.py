"""Real-shaped samples of the exports fizzbot reads (written for the tests, in the layouts the clients
and exporters write), shared by the format tests and the property-based tests that mutate them."""

from __future__ import annotations

import calendar
import json
from pathlib import Path


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return float(calendar.timegm((year, month, day, hour, minute, second)))


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# The lines, and each client's joins, actions and modes around them.
WEECHAT = (
    "2018-05-29 21:20:00\t-->\ttalchas (~talchas@user/talchas) has joined #rust\n"
    "2018-05-29 21:20:37\ttalchas\ttext\n"
    "2018-05-29 21:20:41\t@oli\tan op answers\n"
    "2018-05-29 21:21:02\t *\ttalchas waves\n"
    "2018-05-29 21:21:30\t--\toli is now known as oli_\n"
    "2018-05-29 23:59:59\toli_\tlate\n"
    "2018-05-30 00:00:10\ttalchas\tnext day\n"
    "2018-05-30 00:01:00\t<--\ttalchas (~talchas@user/talchas) has quit (Quit: bye)\n"
)
IRSSI = (
    "--- Log opened Tue May 29 21:20:00 2018\n"
    "21:20 -!- talchas [~t@host] has joined #rust\n"
    "21:20 < talchas> text\n"
    "21:21 <@oli> an op answers\n"
    "21:22  * talchas waves\n"
    "--- Day changed Wed May 30 2018\n"
    "00:05 < talchas> next day\n"
    "--- Log closed Wed May 30 00:10:00 2018\n"
)
IRSSI_SECONDS = (
    "--- Log opened Tue May 29 21:20:00 2018\n"
    "21:20:37 < talchas> text\n"
    "21:20:41 <+oli> a voiced answer\n"
)
ZNC = (
    "[21:20:00] *** Joins: talchas (~t@host)\n"
    "[21:20:37] <talchas> text\n"
    "[21:20:41] * oli waves\n"
    "[21:21:00] *** oli is now known as oli_\n"
    "[21:22:00] -ChanServ- notice text\n"
    "[21:23:00] *** Quits: talchas (~t@host) (Quit: bye)\n"
)
HEXCHAT = (
    "**** BEGIN LOGGING AT Tue May 29 21:20:00 2018\n"
    "\n"
    "May 29 21:20:05 *\ttalchas (~t@host) has joined #rust\n"
    "May 29 21:20:37 <talchas>\ttext\n"
    "May 29 21:20:41 <@oli>\tan op answers\n"
    "May 29 21:21:02 *\ttalchas waves\n"
    "May 29 21:21:30 *\toli is now known as oli_\n"
    "May 29 21:22:00 -->\tnewbie (~n@host) has joined #rust\n"
    "**** ENDING LOGGING AT Tue May 29 21:30:00 2018\n"
)
TEXTUAL = (
    "[2018-05-29T21:20:00+0000] talchas (~t@host) joined the channel\n"
    "[2018-05-29T21:20:37+0000] <talchas> text\n"
    "[2018-05-29T23:20:41+0200] <oli> an answer from Berlin\n"
    "[2018-05-29T21:21:02+0000] • talchas: waves\n"
    "[2018-05-29T21:21:30+0000] oli is now known as oli_\n"
)
MIRC = (
    "Session Start: Tue May 29 21:20:00 2018\r\n"
    "Session Ident: #Rust\r\n"
    "[21:20] * Now talking in #rust\r\n"
    "[21:20] * Topic is 'the rust channel'\r\n"
    "[21:20] <talchas> \x02bold\x02 and \x0304,01red\x03 text\r\n"
    "[21:21] * oli waves\r\n"
    "[21:21] * newbie (~n@host) has joined #rust\r\n"
    "[21:22] * oli is now known as oli_\r\n"
    "Session Close: Tue May 29 21:30:00 2018\r\n"
)
QUASSEL = (
    "[2018-05-29 21:20:00] --> talchas (~t@host) has joined #rust\n"
    "[2018-05-29 21:20:37] <talchas> text\n"
    "[2018-05-29 21:20:41] -*- oli waves\n"
    "[2018-05-29 21:21:00] <-> oli is now known as oli_\n"
    "[2018-05-29 21:21:30] [ChanServ] a notice\n"
    "[2018-05-29 21:22:00] <-- talchas (~t@host) has quit (bye)\n"
)
EGGDROP = (
    "[21:20:00] talchas (~t@host) joined #rust.\n"
    "[21:20:37] <talchas> text\n"
    "[21:20:41] Action: oli waves\n"
    "[21:21:00] Nick change: oli -> oli_\n"
    "[21:21:30] Topic changed on #rust by oli_!~o@host: new topic\n"
    "[21:22:00] talchas (~t@host) left irc: Quit: bye\n"
)
ENERGYMECH = (
    "[21:20:00] *** Joins: talchas (~t@host)\n"
    "[21:20:37] <talchas> text\n"
    "[21:20:41] * oli waves\n"
    "[21:21:00] *** oli changes topic to 'new topic'\n"
    "[21:22:00] *** Parts: talchas (~t@host) (bye)\n"
)
LIMNORIA = (
    "2018-05-29T21:20:00  *** talchas <~t@host> has joined #rust\n"
    "2018-05-29T21:20:37  <talchas> text\n"
    "2018-05-29T21:20:41  * oli waves\n"
)
CHANNEL_AND_DATE = (
    "rust 2018-05-29 [21:20:37] <talchas> text\n"
    "rust 2018-05-29 [21:20:41] <oli> answer\n"
)

# (file path under the test folder, content, what the reader must give: (username, content) of the
# speech, the first message's time, the channel)
CLIENTS = {
    "weechat": ("irc.libera.#rust.weechatlog", WEECHAT, [
        ("talchas", "text"), ("oli", "an op answers"), ("talchas", "/me waves"), ("oli_", "late"),
        ("talchas", "next day")], utc(2018, 5, 29, 21, 20, 0), "#rust"),
    "irssi": ("irssi/#rust.log", IRSSI, [
        ("talchas", "text"), ("oli", "an op answers"), ("talchas", "/me waves"), ("talchas", "next day")],
        utc(2018, 5, 29, 21, 20), "#rust"),
    "irssi_seconds": ("irssi/#rust-seconds.log", IRSSI_SECONDS, [("talchas", "text"), ("oli", "a voiced answer")],
                      utc(2018, 5, 29, 21, 20, 37), "#rust-seconds"),
    "znc": ("znc/user/libera/#rust/2018-05-29.log", ZNC, [
        ("talchas", "text"), ("oli", "/me waves"), ("ChanServ", "notice text")], utc(2018, 5, 29, 21, 20), "#rust"),
    "hexchat": ("hexchat/libera/#rust.log", HEXCHAT, [
        ("talchas", "text"), ("oli", "an op answers"), ("talchas", "/me waves")], utc(2018, 5, 29, 21, 20, 5), "#rust"),
    "textual": ("textual/Channels/#rust/2018-05-29.txt", TEXTUAL, [
        ("talchas", "text"), ("oli", "an answer from Berlin"), ("talchas", "/me waves")], utc(2018, 5, 29, 21, 20), "#rust"),
    "mirc": ("mirc/#rust.libera.log", MIRC, [("talchas", "bold and red text"), ("oli", "/me waves")],
             utc(2018, 5, 29, 21, 20), "#rust"),
    "quassel": ("quassel/#rust.txt", QUASSEL, [("talchas", "text"), ("oli", "/me waves"), ("ChanServ", "a notice")],
                utc(2018, 5, 29, 21, 20), "#rust"),
    "eggdrop": ("eggdrop/logs/#rust.log.29May2018", EGGDROP, [("talchas", "text"), ("oli", "/me waves")],
                utc(2018, 5, 29, 21, 20), "#rust"),
    "energymech": ("mech/rust_2018.05.29.log", ENERGYMECH, [("talchas", "text"), ("oli", "/me waves")],
                   utc(2018, 5, 29, 21, 20), "irc"),
    "limnoria": ("ChannelLogger/libera/#rust/#rust.2018-05-29.log", LIMNORIA, [("talchas", "text"), ("oli", "/me waves")],
                 utc(2018, 5, 29, 21, 20), "#rust"),
    "channel_and_date": ("botlogs/all.log", CHANNEL_AND_DATE, [("talchas", "text"), ("oli", "answer")],
                         utc(2018, 5, 29, 21, 20, 37), "#rust"),
}


SLACK_2016_USERS = [
    {"id": "U1", "name": "alice", "real_name": "Alice", "profile": {"real_name": "Alice", "display_name": ""}},
    {"id": "U2", "name": "bob", "profile": {"real_name": "Bob", "display_name": "bobby"}},
]
PLOT = {"id": "F1", "name": "plot.png", "title": "plot.png", "mimetype": "image/png", "filetype": "png", "user": "U1"}
SLACK_2016_DAY = [
    {"type": "message", "user": "U1", "text": "<@U1|alice> has joined the channel", "subtype": "channel_join", "ts": "1459096800.000002"},
    {"type": "message", "subtype": "file_share", "user": "U1", "upload": True, "file": PLOT, "ts": "1459096810.000003",
     "text": "<@U1|alice> uploaded a file: <https://x.slack.com/files/alice/F1/plot.png|plot.png>"},
    {"type": "message", "subtype": "file_comment", "is_intro": False, "file": PLOT, "ts": "1459096840.000004",
     "text": "<@U2|bob> commented on <@U1|alice>’s file <https://x.slack.com/files/alice/F1/plot.png|plot.png>: looks great",
     "comment": {"id": "Fc1", "created": 1459096840, "timestamp": 1459096840, "user": "U2", "is_intro": False, "comment": "looks great"}},
    {"type": "message", "subtype": "file_share", "user": "U2", "upload": True, "file": dict(PLOT, id="F2", name="x.pdf", mimetype="application/pdf"),
     "ts": "1459096850.000005",
     "text": "<@U2|bob> uploaded a file: <https://x.slack.com/files/bob/F2/x.pdf|x.pdf> and commented: the paper"},
    {"type": "message", "subtype": "bot_message", "text": "build passed", "username": "travis", "bot_id": "B1", "ts": "1459096860.000006"},
    {"type": "message", "subtype": "me_message", "user": "U2", "text": "dances", "ts": "1459096870.000007"},
    {"type": "message", "user": "U1", "text": "question?", "ts": "1459096880.000008", "thread_ts": "1459096880.000008",
     "reply_count": 2, "replies": [{"user": "U2", "ts": "1459096890.000009"}, {"user": "U1", "ts": "1459183300.000001"}]},
    {"type": "message", "user": "U2", "text": "answer", "ts": "1459096890.000009", "thread_ts": "1459096880.000008",
     "parent_user_id": "U1"},
    {"type": "message", "subtype": "channel_topic", "user": "U1", "text": "<@U1|alice> set the channel topic: x", "ts": "1459096895.000010"},
    {"type": "message", "subtype": "pinned_item", "user": "U1", "text": "<@U1|alice> pinned a message", "ts": "1459096896.000011"},
    {"type": "message", "subtype": "huddle_thread", "user": "U1", "text": "", "ts": "1459096897.000012"},
    {"type": "message", "subtype": "a_subtype_from_the_future", "user": "U1", "text": "?", "ts": "1459096898.000013"},
]
SLACK_2016_NEXT_DAY = [
    {"type": "message", "user": "U1", "text": "thanks!", "ts": "1459183300.000001", "thread_ts": "1459096880.000008",
     "parent_user_id": "U1"},
    # Newer exports: no `text`, the words in blocks; a bot known by its profile only; a tombstone.
    {"type": "message", "user": "U2", "ts": "1459183310.000002", "user_profile": {"display_name": "Bob the builder"},
     "blocks": [{"type": "rich_text", "elements": [{"type": "rich_text_section", "elements": [
         {"type": "text", "text": "see "}, {"type": "user", "user_id": "U1"}, {"type": "text", "text": " "},
         {"type": "emoji", "name": "tada"}]}]}]},
    {"type": "message", "subtype": "bot_message", "ts": "1459183320.000003", "bot_id": "B9",
     "bot_profile": {"id": "B9", "name": "Jira"}, "text": "", "attachments": [{"fallback": "Issue created", "title": "FIZZ-1"}]},
    {"type": "message", "user": "U1", "ts": "1459183330.000004", "files": [{"id": "F3", "mimetype": "video/mp4", "name": "a.mp4"}]},
    {"type": "message", "subtype": "tombstone", "user": "USLACKBOT", "text": "This message was deleted.", "hidden": True,
     "ts": "1459183340.000005"},
    {"type": "message", "subtype": "thread_broadcast", "user": "U2", "text": "also to the channel",
     "thread_ts": "1459096880.000008", "ts": "1459183350.000006", "root": {"text": "question?"}},
]


def make_2016_export(root: Path) -> Path:
    write(root / "users.json", json.dumps(SLACK_2016_USERS))
    write(root / "channels.json", json.dumps([{"id": "C1", "name": "general"}]))
    write(root / "integration_logs.json", json.dumps({"logs": []}))
    write(root / "general" / "2016-03-27.json", json.dumps(SLACK_2016_DAY, indent=4, ensure_ascii=False))
    write(root / "general" / "2016-03-28.json", json.dumps(SLACK_2016_NEXT_DAY, indent=4))
    return root


def dce(messages: list[dict], **channel) -> str:
    header = {"id": "111", "type": "GuildTextChat", "categoryId": "10", "category": "Text", "name": "general", "topic": None}
    return json.dumps({"guild": {"id": "1", "name": "G", "iconUrl": ""}, "channel": {**header, **channel},
                       "dateRange": {"after": None, "before": None}, "messages": messages, "messageCount": len(messages)})


def dce_message(mid: int, content: str, kind: str = "Default", **extra) -> dict:
    author = extra.pop("author", {"id": "100", "name": "alice", "discriminator": "0000", "nickname": "Ali", "isBot": False})
    return {"id": str(mid), "type": kind, "timestamp": f"2021-03-01T10:{mid:02d}:00.000+00:00", "timestampEdited": None,
            "callEndedTimestamp": None, "isPinned": False, "content": content, "author": author,
            "attachments": [], "embeds": [], "stickers": [], "reactions": [], "mentions": [], **extra}


DCE_MESSAGES = [
    dce_message(1, "hello"),
    dce_message(2, "", attachments=[{"id": "9", "url": "https://cdn.discordapp.com/a/cat.jpg", "fileName": "cat.jpg",
                                     "fileSizeBytes": 100}]),
    dce_message(3, "", stickers=[{"id": "7", "name": "Wave", "format": "Lottie", "sourceUrl": "https://x/7.json"}]),
    dce_message(4, "@Ali cute", "Reply", reference={"messageId": "2", "channelId": "111", "guildId": "1"}),
    dce_message(5, "Started a thread.", "ThreadCreated"),
    dce_message(6, "", "20", author={"id": "900", "name": "Bot", "discriminator": "0000", "isBot": True},
                embeds=[{"title": "Poll", "description": "vote now", "fields": []}]),
    dce_message(7, "pinned", "ChannelPinnedMessage"),
    dce_message(8, "a kind from a newer exporter", "SomethingNew"),
    dce_message(9, "old exporter: no nickname", author={"id": "200", "name": "bob", "discriminator": "1234", "isBot": False}),
]


ANDROID_24H = (
    "09/12/2020, 23:50 - Messages and calls are end-to-end encrypted. No one outside of this chat, not even "
    "WhatsApp, can read or listen to them. Tap to learn more.\n"
    "09/12/2020, 23:50 - Ann created group \"Family\"\n"
    "09/12/2020, 23:51 - Ann: Good night everyone\n"
    "09/12/2020, 23:52 - Ben: Night!\n"
    "it's late\n"
    "really\n"
    "13/12/2020, 08:00 - Ann: <Media omitted>\n"
    "13/12/2020, 08:01 - +44 7700 900123: who is this?\n"
    "13/12/2020, 08:02 - Ann changed the subject from \"Family: old\" to \"Family\"\n"
    "13/12/2020, 08:03 - Ben: This message was deleted\n"
    "13/12/2020, 08:04 - Ben: IMG-20201213-WA0001.jpg (file attached)\n"
    "the view from here\n"
    "13/12/2020, 08:05 - Ann: fixed it <This message was edited>\n"
)
ANDROID_12H_US = (
    "12/9/20, 11:51\u202fPM - Ann: Good night everyone\n"
    "12/9/20, 11:52\u202fPM - Ben: Night!\n"
    "12/13/20, 8:00\u202fAM - Ann: <Media omitted>\n"
)
IOS = (
    "[09/12/2020, 23:51:10] Family: \u200eMessages and calls are end-to-end encrypted.\n"
    "[09/12/2020, 23:51:12] Ann: Good night everyone\n"
    "[09/12/2020, 23:52:30] Ben: Night!\n"
    "it's late\n"
    "\u200e[13/12/2020, 08:00:01] Ann: \u200eimage omitted\n"
    "\u200e[13/12/2020, 08:00:05] Ben: \u200esticker omitted\n"
    "[13/12/2020, 08:01:00] Family: \u200eAnn added Cat\n"
    "\u200e[13/12/2020, 08:02:00] Ann: \u200e<attached: 00000012-PHOTO-2020-12-13-08-02-00.jpg>\n"
)
GERMAN = (
    "09.12.20, 23:51 - Ann: Gute Nacht\n"
    "13.12.20, 08:00 - Ben: Morgen\n"
)



def telegram_forum() -> dict:
    """A forum supergroup: a topic, a reply inside it, a forward, media, a pin, a type of the future."""
    def msg(mid, **fields):
        base = {"id": mid, "type": "message", "date": "2023-01-01T10:00:00", "date_unixtime": str(1672567200 + mid),
                "from": "Ann", "from_id": "user1", "text": "", "text_entities": []}
        return {**base, **fields}

    chat = {"name": "Dev Team", "type": "private_supergroup", "id": 77, "messages": [
        {"id": 1, "type": "service", "date": "2023-01-01T10:00:00", "date_unixtime": "1672567201", "actor": "Ann",
         "actor_id": "user1", "action": "topic_created", "title": "Backend", "text": ""},
        msg(2, text="in general"),
        msg(3, text="api design?", reply_to_message_id=1),
        msg(4, **{"from": "Ben", "from_id": "user2"}, text="REST", reply_to_message_id=3),
        msg(5, forwarded_from="Some Channel", text="someone else's words", reply_to_message_id=1),
        msg(6, media_type="sticker", sticker_emoji="😀", file="(File not included.)"),
        msg(7, photo="(File not included.)", width=1, height=1),
        msg(8, media_type="voice_message", file="(File not included.)", mime_type="audio/ogg"),
        msg(9, photo="(File not included.)", text="a photo with a caption"),
        {"id": 10, "type": "service", "date": "2023-01-01T10:00:10", "date_unixtime": "1672567210", "actor": "Ann",
         "actor_id": "user1", "action": "pin_message", "message_id": 3, "text": ""},
        msg(11, type="unsupported_kind", text="?"),
    ]}
    return chat


def element_export() -> dict:
    """An Element room export: members, text, a reply, an emote, a notice, an edit, media, a reaction,
    a redaction, an undecrypted event, a thread, a custom event type."""
    def event(n, kind="m.room.message", sender="@alice:example.org", **content):
        return {"type": kind, "sender": sender, "origin_server_ts": 1620000000000 + n * 1000,
                "event_id": f"$e{n}", "room_id": "!room:example.org", "content": content, "unsigned": {"age": 5}}

    export = {
        "room_name": "Fizz Room", "room_creator": "Alice", "topic": "", "export_date": "01/05/2021",
        "exported_by": "Alice",
        "messages": [
            {**event(0, "m.room.member", displayname="Alice A", membership="join"), "state_key": "@alice:example.org"},
            {**event(1, "m.room.member", sender="@bob:example.org", displayname="Bob", membership="join"),
             "state_key": "@bob:example.org"},
            event(2, msgtype="m.text", body="hello"),
            event(3, sender="@bob:example.org", msgtype="m.text",
                  body="> <@alice:example.org> hello\n\nhi back",
                  **{"m.relates_to": {"m.in_reply_to": {"event_id": "$e2"}}}),
            event(4, msgtype="m.emote", body="waves"),
            event(5, sender="@bot:example.org", msgtype="m.notice", body="build passed"),
            event(6, msgtype="m.text", body="typo"),
            event(7, msgtype="m.text", body="* fixed",
                  **{"m.new_content": {"msgtype": "m.text", "body": "fixed"},
                     "m.relates_to": {"rel_type": "m.replace", "event_id": "$e6"}}),
            event(8, sender="@bob:example.org", msgtype="m.image", body="cat.jpg", url="mxc://x/y"),
            event(9, "m.sticker", sender="@bob:example.org", body="a sticker", url="mxc://x/z"),
            event(10, "m.reaction", **{"m.relates_to": {"rel_type": "m.annotation", "event_id": "$e2", "key": "👍"}}),
            {**event(11), "content": {}, "unsigned": {"redacted_because": {"type": "m.room.redaction"}}},
            event(12, "m.room.encrypted", algorithm="m.megolm.v1.aes-sha2", ciphertext="..."),
            event(13, msgtype="m.text", body="in a thread", **{"m.relates_to": {"rel_type": "m.thread", "event_id": "$e2"}}),
            event(14, "com.example.custom"),
        ],
    }
    return export
