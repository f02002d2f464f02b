"""IRC logs: one text file per channel and day (or per channel), one event per line, as the common
clients, bouncers and bots write them. docs/FORMATS.md has a sample line of each.

Layouts read (detected per line, so a file may mix them):

- the timestamp: `[HH:MM]`, `[HH:MM:SS]` (mIRC, ZNC, eggdrop, energymech, Quassel, the Ubuntu logs),
  irssi's bare `HH:MM[:SS]`, full dates `2018-05-29 21:20:37` (weechat, with a TAB after it),
  `[2018-05-29T21:20:37+0000]` (Textual, The Lounge: an offset is honoured), `2018-05-29T21:20:37`
  (Limnoria), HexChat/XChat's `May 29 21:20:37`, an AM/PM clock, and a channel and/or date before the
  time (`rust 2018-05-29 [21:20:37] <nick> text`); a line without one takes the time of the line before;
- messages `<nick> text` (mode prefixes `<@nick>`, `< nick>` dropped), weechat's `nick<TAB>text`,
  HexChat's `<nick><TAB>text`;
- actions, rendered `/me does something`: `* nick does`, weechat's ` *<TAB>nick does`, Quassel's
  `-*- nick does`, Textual's `• nick: does`, eggdrop's `Action: nick does`, the old Ubuntu logger's
  `=== nick does`;
- notices `-nick:#chan- text`, `-nick- text`, `(nick/#chan) text`, Quassel's `[nick] text`: in the wild
  these are bots and spam, so they are flagged `is_bot`;
- system lines (joins, parts, quits, nick changes, modes, topics, kicks: flagged `is_system`): the
  prefixes `-!-` (irssi), `-->`/`<--`/`--` (weechat, HexChat, Quassel), `***` (ZNC, energymech,
  Limnoria, The Lounge), `<->`/`<-*` (Quassel), `=!=`; mIRC's and HexChat's `* nick has joined #x`,
  `* Joins: nick`, `* nick is now known as x` (a `*` line of one of these shapes is an event, any other
  is an action); and the bare sentences of Textual and eggdrop (`nick (u@h) joined the channel`,
  `Nick change: a -> b`, `Topic changed on #x by y: ...`);
- markers, which set the date and are not messages: irssi's `--- Log opened Tue May 29 21:20:00 2018`
  and `--- Day changed Wed May 30 2018`, mIRC's `Session Start: Mon Dec 29 19:37:51 2014` (and
  `Session Ident: #chan`, which names the channel), HexChat's `**** BEGIN LOGGING AT ...`;
- mIRC colour and formatting codes (`\\x03NN,NN`, bold, underline, ...) are removed; CRLF is read as LF.

Traps, and what this reader does about them:

- The date: from the line (a full date), else from the log's markers, else the first date in the
  file name, else in the folders above it (`2020-01-01.log`, `#chan.20200101.log`, `chan_2020.01.01.log`,
  `#chan.log.29May2020`, `2013/01/04/#chan.txt`). A file with none is dated 1970-01-01 (its order is still
  kept) and a warning says so. HexChat's lines carry month and day but no year: the year comes from
  the markers or the path, and moves on when December turns to January.
- Time zones: a time with an offset is exact; every other is the wall clock of `data.timezone`
  (default UTC).
- Midnight: when the clock goes backwards inside a file, the log has moved on a day. Old Ubuntu logs
  (2004-2007) were written with a *12-hour* clock and no AM/PM (`11:59` -> `00:00`, `12:59` -> `01:00`
  at noon as well as at midnight): while a file has shown no hour above 12, a wrap from 11/12 o'clock
  to 0/1 o'clock moves on 12 hours rather than 24. Timestamps never decrease within a file.
- Minute precision: many messages share a timestamp; file order is kept by `read_unit`.
- The old Ubuntu logger wrote `/me` actions as `=== nick does something`, beside its real system
  events (`=== nick [user@host]  has joined #ubuntu`): a `===` line is a system event when it has the
  shape of one (join/leave/quit, nick change, mode, topic, kick, netsplit), else an action.
- Bots talk like people (`<ubotu> ...`): a nick that ends in `bot`/`botu`/`bottu` (digits allowed) or
  `serv` (ChanServ, NickServ) is flagged `is_bot`; `data.bot_usernames` names others.
- Nick case: IRC nicks are case-insensitive, so `author_id` is the lower-cased nick.
- The channel: `opts.irc_channel` if set; else the one a line names before its time; else mIRC's
  `Session Ident`; else the channel most named by the file's join and notice lines (lower-cased: IRC
  channel names are case-insensitive); else a `#chan` in the file name or folder; else the channel
  the folder's other logs name; else `irc`.
- A line of no known shape is a bad record (`opts.bad`), named by file and line; blank lines are skipped.
  The 153 real Ubuntu logs have none.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from fizzbot.data.messages import InputError, Message, ReadOptions, clean_content

if TYPE_CHECKING:
    from fizzbot.data.formats import SourceUnit

FORMAT = "irc"
DAY = 86400
HALF_DAY = 43200
_MONTH_NAMES = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
_MONTHS = {name: number for number, name in enumerate(calendar.month_abbr) if name}

# The common line, `[HH:MM] <nick> text` (and `[HH:MM:SS]`), gets one regex; the rest take the general path.
# `<-- nick has quit (bye >)` is a system line, not a message from "-- nick has quit (bye ".
# Only valid times and non-blank nicks take it: anything odd goes the general way, which names the problem.
_FAST_RE = re.compile(r"\[([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d|60))?\] <(?!-- ) *([^>\s][^>]*)> ?(.*)")
# Any timestamp prefix: an optional channel before a date or a bracketed time; an optional date
# (ISO, or HexChat's month and day); the time with optional seconds, fraction, AM/PM and offset.
_STAMP_RE = re.compile(
    r"(?:(?P<chan>[#&+!][\w.\-]+|[A-Za-z_][\w.\-]*) +(?=\[?\d{4}[-/.]\d\d[-/.]\d\d|\[\d\d?:))?"
    r"\[?"
    r"(?:(?P<mon>" + _MONTH_NAMES + r") +(?P<mday>\d{1,2}) +"
    r"|(?P<y>\d{4})[-/.](?P<m>\d\d)[-/.](?P<d>\d\d)(?:T| +\[?))?"
    r"(?P<H>\d\d?):(?P<M>\d\d)(?::(?P<S>\d\d)(?:[.,]\d+)?)?"
    r"(?: ?(?P<ampm>[AaPp][Mm]))?"
    r"(?P<tz>Z|[+-]\d\d:?\d\d)?"
    r"\]?(?P<sep>[ \t]|$)"
)
_MESSAGE_RE = re.compile(r"<(?!-- )([^>]+)> ?(.*)")
_ACTION_RE = re.compile(r"\* (\S+) ?(.*)")
_CHANNEL_NOTICE_RE = re.compile(r"-([^\s:!-][^\s:]*):(#\S*?)- ?(.*)")
_PRIVATE_NOTICE_RE = re.compile(r"-([^\s:!-][^\s:()]*)(?:\([^)]*\))?- ?(.*)")
_PAREN_NOTICE_RE = re.compile(r"\(([^\s/()]+)/(#[^\s)]*)\) ?(.*)")
_BRACKET_NOTICE_RE = re.compile(r"\[([^\s\[\]]+)\] (.*)")  # Quassel
_TEXTUAL_ACTION_RE = re.compile(r"• (\S+?):? (.*)")
_SYSTEM_PREFIXES = ("-!- ", "--> ", "<-- ", "*** ", "-- ", "<-> ", "<-* ", "=!= ", "-@- ", "==> ", "<== ")
# `* ...` lines that are events, not actions (mIRC, HexChat, and clients that copy them).
_STAR_SYSTEM_RE = re.compile(
    r"\* (?:(?:Joins|Parts|Quits|Kicks|Topic|Mode|Nick): |Now talking in |Topic is |Set by |Disconnected"
    r"|Attempting to rejoin|Rejoined channel|Retrieving [#&]|You (?:have|are|were) |Your |Connecting to "
    r"|Connected to |Looking up |Logged in as "
    r"|\S+ (?:\(\S*\) )?has (?:joined|left) [#&]|\S+ (?:\(\S*\) )?has quit (?:IRC|\()|\S+ \(\S*\) Quit\b"
    r"|\S+ is now known as |\S+ sets mode: |\S+ was kicked (?:from [#&]\S* )?by |\S+ has kicked \S+ from "
    r"|\S+ changes topic to |\S+ has changed the topic to"
    r"|\S+ (?:gives|removes) (?:channel (?:half-)?operator status|voice) (?:to|from) |\S+ sets ban on |\S+ removes ban on )"
)
# The bare sentences of Textual and eggdrop.
_BARE_SYSTEM_RE = re.compile(
    r"(?:\S+ \(\S*\) (?:joined|left|quit)\b|\S+ is now known as \S+$|\S+ changed the topic to |\S+ sets mode "
    r"|\S+ kicked \S+ from |\S+ kicked from [#&]|Nick change: |Topic changed on |[#&]\S*: mode change "
    r"|Last message repeated \d+ time)"
)
_EGGDROP_ACTION_RE = re.compile(r"Action: (\S+) ?(.*)")
_QUASSEL_ACTION_RE = re.compile(r"-\*- (\S+) ?(.*)")
_MARKER_RE = re.compile(r"(?:--- (?:Log opened|Log closed|Day changed)|Session (?:Start|Close|Time):|\*\*\*\* (?:BEGIN|ENDING) LOGGING AT)")
_SESSION_IDENT_RE = re.compile(r"Session Ident: ([#&]\S+)")
# The old Ubuntu logger's real system events after `=== ` (anything else there is a /me action).
# Nicks in that corpus may hold a space (`A[D] minS`), so the shapes key on what follows the nick.
_EQ_SYSTEM_RE = re.compile(
    r"\] +has (?:joined|left|quit)\b| is now known as |^mode/|^\.\.\[topic/|^Topic (?:for|\()"
    r"| changed the topic of | was kicked off |^net(?:joined|split)"
)
# A date in words: `Tue May 29 21:20:00 2018`, `Wed May 30 2018` (irssi, mIRC, HexChat markers).
_WORDS_DATE_RE = re.compile(r"\b(" + _MONTH_NAMES + r")[a-z]*\s+(\d{1,2})\s+(?:\d\d?:\d\d(?::\d\d)?\s+)?(\d{4})\b")
# Dates in paths: `2020-01-01`, `20200101`, `2020.01.01`, `2020_01_01`, `2020/01/04` and eggdrop's `29May2020`.
_PATH_DATE_RE = re.compile(r"(?<!\d)(\d{4})([-._/]?)(\d\d)\2(\d\d)(?!\d)")
_PATH_WORDS_DATE_RE = re.compile(r"(?<!\d)(\d\d)(" + _MONTH_NAMES + r")(\d{4})(?!\d)", re.IGNORECASE)
# Where a log names its channel: the first `#chan` of a system line (join, part, mode, topic, kick), or a
# channel notice. Matched from the line start, so that a pasted "* x has joined #other" inside a
# `<nick>` message does not count.
_CHANNEL_HINT_RE = re.compile(
    r"[^<]{0,40}?(?:(?:=== |-!- |--> |<-- |\*\*\* )[^#]*(#[^\s,:\]\)\x07]+)"
    r"|-[^\s:!<>-][^\s:<>]*:(#\S+?)- |\([^\s/()<>]+/(#[^\s)]+)\) )"
)
# `#ubuntu.log`, `#ubuntu.2020-01-01.log`, `freenode_#ubuntu_20200101.log`, `irc.libera.#rust.weechatlog`,
# `#rust.log.29May2018`, or a folder `#ubuntu`: the `#chan` without what follows it (a date, the extension).
_PATH_CHANNEL_RE = re.compile(r"#[^\s/\\]+")
_PATH_CHANNEL_TAIL_RE = re.compile(
    r"(?:[._-]\d{4}[-.]?\d\d[-.]?\d\d.*|\.(?:log|txt|weechatlog)(?:\..*)?)$", re.IGNORECASE
)
# How many files of a folder to look through for the channel their lines name (see `_folder_channel`).
_FOLDER_SCAN_FILES = 64
_FOLDER_SCAN_VOTES = 5
# Nicks of bots and services: ubotu, ubottu, ubot3, FloodBot1, mikebot, ChanServ, NickServ.
_BOT_NICK_RE = re.compile(r"(?:bot+u?\d*_*|serv)$", re.IGNORECASE)
_NICK_MODES = "@+%&~!"
# mIRC formatting: colour (\x03 with up to two colour numbers), bold, italic, underline, strike, reverse, reset.
_CONTROL_RE = re.compile(r"\x03(?:\d{1,2}(?:,\d{1,2})?)?|[\x02\x0f\x11\x16\x1d\x1e\x1f]")
_CONTROL_BYTES = (b"\x02", b"\x03", b"\x0f", b"\x11", b"\x16", b"\x1d", b"\x1e", b"\x1f")


def strip_formatting(text: str) -> str:
    """mIRC colour and formatting codes removed (a cheap check first: most lines have none)."""
    return _CONTROL_RE.sub("", text) if not text.isprintable() else text


def looks_like_irc(first_line: str) -> bool:
    """Whether a line has one of the shapes this reader knows (for `_sniff`)."""
    line = strip_formatting(first_line.strip("\ufeff\r\n"))
    if _MARKER_RE.match(line) or _SESSION_IDENT_RE.match(line):
        return True
    stamp = _STAMP_RE.match(line)
    if stamp is None:
        return _classify(line)[0] != "unknown"
    body = line[stamp.end():]
    if stamp.group("sep") == "\t" and "\t" in body:
        return _classify_tabbed(body)[0] != "unknown"
    return _classify(body.lstrip(" ").replace("\t", " ", 1))[0] != "unknown"


def _classify(body: str) -> tuple[str, str, str]:
    """(kind, nick, text) of a line without its timestamp.

    kind: "message", "action", "notice", "system", "marker" or "unknown".
    """
    first = body[:1]
    if body.startswith(_SYSTEM_PREFIXES):
        text = body.split(" ", 1)[1]
        return "system", text.split(" ", 1)[0], text
    if first == "<":
        m = _MESSAGE_RE.match(body)
        if m:
            return "message", m.group(1), m.group(2)
    elif first == "=":
        if body.startswith("=== "):
            text = body[4:]
            nick, _, rest = text.partition(" ")
            if _EQ_SYSTEM_RE.search(text) or not rest:
                return "system", nick, text
            return "action", nick, rest
    elif first == "*":
        if _STAR_SYSTEM_RE.match(body):
            text = body[2:]
            return "system", text.split(" ", 1)[0], text
        m = _ACTION_RE.match(body)
        if m:
            return "action", m.group(1), m.group(2)
    elif first == "-":
        if body.startswith("--- "):
            if _MARKER_RE.match(body):
                return "marker", "", body[4:]
            text = body[4:]
            return "system", text.split(" ", 1)[0], text
        m = _QUASSEL_ACTION_RE.match(body)
        if m:
            return "action", m.group(1), m.group(2)
        m = _CHANNEL_NOTICE_RE.match(body) or _PRIVATE_NOTICE_RE.match(body)
        if m:
            return "notice", m.group(1), m.group(m.lastindex)
    elif first == "(":
        m = _PAREN_NOTICE_RE.match(body)
        if m:
            return "notice", m.group(1), m.group(3)
    elif first == "[":
        m = _BRACKET_NOTICE_RE.match(body)
        if m:
            return "notice", m.group(1), m.group(2)
    elif first == "•":
        m = _TEXTUAL_ACTION_RE.match(body)
        if m:
            return "action", m.group(1), m.group(2)
    elif first == "A":
        m = _EGGDROP_ACTION_RE.match(body)
        if m:
            return "action", m.group(1), m.group(2)
    if _BARE_SYSTEM_RE.match(body):
        return "system", body.split(" ", 1)[0], body
    return "unknown", "", body


def _classify_tabbed(body: str) -> tuple[str, str, str]:
    """weechat's `prefix<TAB>message`: the prefix is the nick, ` *` for an action, or an event's arrow."""
    prefix, _, text = body.partition("\t")
    prefix = prefix.strip()
    if prefix in ("-->", "<--", "--", "=!=", "<->", "-@-", "<-*", "==>", "<=="):
        return "system", text.split(" ", 1)[0], text
    if prefix == "*":
        nick, _, rest = text.partition(" ")
        return ("action", nick, rest) if nick else ("unknown", "", body)
    if prefix and " " not in prefix:
        return "message", prefix, text
    return "unknown", "", body


class _Clock:
    """Turns the times of one file into epoch seconds that never go backwards.

    Times are wall-clock times: `base` is the epoch of the current day's midnight as if the wall clock
    were UTC, plus the rollovers so far; a time-only stamp is `base + seconds into the day`. `utc`
    turns a wall-clock epoch into a real one (an explicit offset, else the configured zone).
    """

    __slots__ = ("base", "prev", "max_hour", "last", "dated", "tz", "_offsets", "_days")

    def __init__(self, day_epoch: float | None, tz: dt.tzinfo):
        self.dated = day_epoch is not None
        self.set_day(day_epoch or 0.0)
        self.max_hour = -1
        self.last = float("-inf")
        self.tz = None if tz is dt.timezone.utc else tz
        self._offsets: dict[int, float] = {}
        self._days: dict[tuple[int, int, int], float] = {}

    def set_day(self, day_epoch: float) -> None:
        self.base = float(day_epoch)
        self.prev = -1

    def set_date(self, year: int, month: int, day: int) -> bool:
        """Move to a date the log states (False: no such date); no rollover is guessed across it."""
        key = (year, month, day)
        day_epoch = self._days.get(key)
        if day_epoch is None:
            try:
                day_epoch = self._days[key] = float(calendar.timegm(dt.date(year, month, day).timetuple()))
            except (ValueError, OverflowError):
                return False
        self.set_day(day_epoch)
        self.dated = True
        return True

    def year(self) -> int:
        return dt.datetime.fromtimestamp(self.base, dt.timezone.utc).year

    def at(self, hour: int, minute: int, second: int, offset_s: int | None = None) -> float:
        """The epoch of a time of day on the current day (moving on a day when the clock went back)."""
        secs = hour * 3600 + minute * 60 + second
        if secs < self.prev:
            # A 12-hour clock wraps at 12 o'clock (written 12 or 00) into 1 (or 0) o'clock.
            twelve_hour = self.max_hour <= 12 and self.prev >= 11 * 3600 and secs < 2 * 3600
            self.base += HALF_DAY if twelve_hour else DAY
        self.prev = secs
        if hour > self.max_hour:
            self.max_hour = hour
        wall = self.base + secs
        if offset_s is None and self.tz is None:  # UTC logs, the common case: `utc` inlined
            if wall < self.last:
                wall = self.last
            self.last = wall
            return wall
        return self.utc(wall, offset_s)

    def utc(self, wall: float, offset_s: int | None = None) -> float:
        """The real epoch of a wall-clock epoch, never before the previous one of the file."""
        if offset_s is not None:
            ts = wall - offset_s
        elif self.tz is None:
            ts = wall
        else:
            hour = int(wall // 3600)
            offset = self._offsets.get(hour)
            if offset is None:
                moment = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=hour * 3600)
                offset = self._offsets[hour] = moment.replace(tzinfo=self.tz).utcoffset().total_seconds()
            ts = wall - offset
        # Within a file time only moves forwards (a full-dated line may not agree with the file name).
        if ts < self.last:
            ts = self.last
        self.last = ts
        return ts


def _offset_seconds(tz: str | None) -> int | None:
    if not tz:
        return None
    if tz == "Z":
        return 0
    sign = -1 if tz[0] == "-" else 1
    digits = tz[1:].replace(":", "")
    return sign * (int(digits[:2]) * 3600 + int(digits[2:4]) * 60)


def _valid_day(year: int, month: int, day: int) -> float | None:
    if not 1970 <= year <= 2100:
        return None
    try:
        return float(calendar.timegm(dt.date(year, month, day).timetuple()))
    except ValueError:
        return None


def path_day(path: Path) -> float | None:
    """Midnight (wall clock) of the first date in the file name, else in the folders above it, or None."""
    parents = [p.name for p in path.parents][:4]
    candidates = [path.name, *parents, "/".join(reversed(parents[:3]))]
    for text in candidates:
        for m in _PATH_DATE_RE.finditer(text):
            day = _valid_day(int(m.group(1)), int(m.group(3)), int(m.group(4)))
            if day is not None:
                return day
        for m in _PATH_WORDS_DATE_RE.finditer(text):
            day = _valid_day(int(m.group(3)), _MONTHS[m.group(2).title()], int(m.group(1)))
            if day is not None:
                return day
    return None


def _named_channel(lines: list[str]) -> str | None:
    """The channel a log's own system and notice lines name most often among their first 50 hits."""
    hints: Counter[str] = Counter()
    seen = 0
    for line in lines:
        # Most lines name no channel: the cheap test spares the regex (a whole-text regex costs 10x).
        if "#" in line:
            m = _CHANNEL_HINT_RE.match(line) or _SESSION_IDENT_RE.match(line)
            if m:
                hints[next(group for group in m.groups() if group).lower()] += 1
                seen += 1
                if seen >= 50:
                    break
    return hints.most_common(1)[0][0] if hints else None


@functools.lru_cache(maxsize=256)
def _folder_channel(folder: str, suffix: str, mtime_ns: int) -> str | None:
    """The channel that the other logs of a folder name (`mtime_ns` only keys the cache).

    Loggers name a folder's day files by date alone (`2020-01-01.log`), so the files of one folder are
    one channel's; and many day files name it nowhere (the Ubuntu logs after 2007 drop join lines).
    A vote over the first few files that do name one settles it for all of them.
    """
    from fizzbot.data.formats import _is_documentation

    votes: Counter[str] = Counter()
    files = sorted(p for p in Path(folder).iterdir() if p.suffix == suffix and p.is_file() and not _is_documentation(p))
    for file in files[:_FOLDER_SCAN_FILES]:
        try:
            named = _named_channel(file.read_bytes().decode("utf-8", "replace").split("\n"))
        except OSError:
            continue
        if named:
            votes[named] += 1
            if sum(votes.values()) >= _FOLDER_SCAN_VOTES:
                break
    return votes.most_common(1)[0][0] if votes else None


def _channel(lines: list[str], path: Path, opts: ReadOptions) -> str:
    """`opts.irc_channel`; else the file's own lines; else its path; else its folder's other logs; else `irc`."""
    if opts.irc_channel:
        return opts.irc_channel
    named = _named_channel(lines)
    if named:
        return named
    for part in (path.name, path.parent.name):
        m = _PATH_CHANNEL_RE.search(part)
        if m:
            name = _PATH_CHANNEL_TAIL_RE.sub("", m.group(0))
            if len(name) > 1:
                return name.lower()
    try:
        mtime_ns = path.parent.stat().st_mtime_ns
    except OSError:
        return "irc"
    return _folder_channel(str(path.parent), path.suffix, mtime_ns) or "irc"


def _line_channel(name: str) -> str:
    """The channel a line names before its time, as a channel name (`rust` -> `#rust`)."""
    name = name.lower()
    return name if name[:1] in "#&+!" else "#" + name


def _lines(path: Path, opts: ReadOptions) -> tuple[list[str], bool]:
    """The file's lines, and whether it holds any mIRC formatting code (one scan of its bytes)."""
    from fizzbot.data.formats import read_bytes, read_lines

    raw = read_bytes(path)
    return read_lines(str(path), raw, opts), any(code in raw for code in _CONTROL_BYTES)  # memchr: fast


def read(unit: "SourceUnit", opts: ReadOptions) -> Iterator[Message]:
    path = Path(unit.path)
    label = str(path)
    # mIRC formatting codes are rare: one look at the file spares most lines a check of their own.
    lines, formatted = _lines(path, opts)
    channel = _channel(lines, path, opts)
    clock = _Clock(path_day(path), opts.tz)
    max_chars = opts.max_message_chars
    # nick as written -> (username, author_id, is_bot), computed once per nick (`who` fills it in).
    nicks: dict[str, tuple[str, str, bool]] = {}

    def who(raw_nick: str) -> tuple[str, str, bool]:
        nick = raw_nick.strip()
        if nick[:1] in _NICK_MODES and len(nick) > 1:
            nick = nick[1:]
        info = nicks[raw_nick] = (nick, nick.lower(), bool(_BOT_NICK_RE.search(nick)))
        return info

    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        fast = _FAST_RE.match(line)
        if fast is not None:
            hh, mm, ss, raw_nick, body = fast.groups()
            username, author_id, is_bot = nicks.get(raw_nick) or who(raw_nick)
            ts = clock.at(int(hh), int(mm), int(ss) if ss else 0)
            if formatted and not body.isprintable():
                body = _CONTROL_RE.sub("", body)
            # Positional: keywords cost 0.25 s per million messages. Fields: channel, author_id,
            # username, content, ts, order, is_bot, is_system, format (the shape tests pin them).
            yield Message(channel, author_id, username, clean_content(body, max_chars), ts, 0, is_bot, False, FORMAT)
            continue

        if formatted:
            line = strip_formatting(line)
            if not line:
                continue
        if line[0] in "-*S":  # markers: `--- Log opened`, `**** BEGIN LOGGING`, `Session Start:`
            if _MARKER_RE.match(line):
                date = _WORDS_DATE_RE.search(line)
                if date is not None:
                    month_name, day, year = date.groups()
                    clock.set_date(int(year), _MONTHS[month_name], int(day))
                continue
            ident = _SESSION_IDENT_RE.match(line)
            if ident is not None:
                if not opts.irc_channel:
                    channel = ident.group(1).lower()
                continue

        line_channel = channel
        stamp = _STAMP_RE.match(line)
        if stamp is not None:
            g = stamp.group
            hour, minute, second = int(g("H")), int(g("M")), int(g("S") or 0)
            ampm = g("ampm")
            if ampm:
                hour = hour % 12 + (12 if ampm[0] in "Pp" else 0)
            if hour > 23 or minute > 59 or second > 60:
                opts.bad(InputError(f"not a time of day: {line[:40]!r}", path=label, line=number, kind="not a time of day"))
                continue
            if g("y") and not clock.set_date(int(g("y")), int(g("m")), int(g("d"))):
                opts.bad(InputError(f"not a date: {line[:40]!r}", path=label, line=number, kind="not a date"))
                continue
            if g("mon"):
                month, mday = _MONTHS[g("mon")], int(g("mday"))
                year = clock.year() if clock.dated else 1970
                if clock.dated and month < _month_of(clock.base) - 6:
                    year += 1  # December's log went on into January
                clock_dated = clock.dated
                if not clock.set_date(year, month, mday):
                    opts.bad(InputError(f"not a date: {line[:40]!r}", path=label, line=number, kind="not a date"))
                    continue
                clock.dated = clock_dated
            ts = clock.at(hour, minute, second, _offset_seconds(g("tz")))
            if g("chan") and not opts.irc_channel:
                line_channel = _line_channel(g("chan"))
            body = line[stamp.end():]
            if g("sep") == "\t" and "\t" in body:
                kind, raw_nick, content = _classify_tabbed(body)
            else:
                kind, raw_nick, content = _classify(body.lstrip(" ").replace("\t", " ", 1))
        else:
            ts = clock.last if clock.last != float("-inf") else clock.utc(clock.base)
            kind, raw_nick, content = _classify(line.replace("\t", " ", 1))
        if kind == "message" or kind == "action" or kind == "notice":
            if not raw_nick.strip():
                opts.bad(InputError(f"no nick: {line[:80]!r}", path=label, line=number, kind="no nick"))
                continue
            username, author_id, is_bot = nicks.get(raw_nick) or who(raw_nick)
            if kind == "action":
                content = "/me " + content if content else ""
            yield Message(
                line_channel, author_id, username, clean_content(content, max_chars), ts,
                is_bot=is_bot or kind == "notice", format=FORMAT,
            )
        elif kind == "system":
            nick = raw_nick.strip() or "*"
            yield Message(line_channel, nick.lower(), nick, clean_content(content, max_chars), ts, is_system=True, format=FORMAT)
        elif kind == "marker":
            date = _WORDS_DATE_RE.search(content)
            if date is not None:
                month_name, day, year = date.groups()
                clock.set_date(int(year), _MONTHS[month_name], int(day))
        elif line.strip():
            opts.bad(InputError(f"not an IRC line of a known shape: {line[:80]!r}", path=label, line=number))
    if clock.last != float("-inf") and not clock.dated:  # some line was read, and nothing gave its date
        opts.warn(InputError(
            "no date in the log, its file name or its folders: read as 1970-01-01 "
            "(put the date in the name, e.g. 2020-01-01.log)",
            path=label,
            kind="no date",
        ))


def _month_of(epoch: float) -> int:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).month
