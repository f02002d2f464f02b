"""IRC logs: one text file per channel and day (or per channel), one event per line.

Line shapes read (a timestamp prefix is optional on every one of them):

- timestamps: `[HH:MM]`, `[HH:MM:SS]`, irssi's bare `HH:MM`, and full dates
  `[2020-01-01 12:00:00]` / `2020-01-01T12:00:00` (a `Z` or `+HH:MM` offset is honoured; none means UTC);
- messages `<nick> text` (irssi's `<@nick>`, `< nick>` mode prefixes are dropped);
- actions `* nick does something`, rendered `/me does something`;
- notices `-nick:#chan- text`, `-nick- text` and `(nick/#chan) text`: in the wild these are bots and
  spam, so they are flagged `is_bot`;
- system lines `=== ...`, `-!- ...`, `--> ...`, `<-- ...`, `*** ...` (joins, quits, nick changes, modes,
  topics, kicks): flagged `is_system`;
- irssi markers `--- Log opened Tue Jan 01 12:00:00 2020` / `--- Day changed Wed Jan 02 2020`: they set
  the date and are not messages.

Traps, and what this reader does about them:

- The date is usually only in the file name: the first `YYYY-MM-DD` (or `_YYYYMMDD`) in it. A line that
  carries a full date wins; a file with neither is dated 1970-01-01 (its order is still kept).
- Midnight: when the clock goes backwards inside a file, the log has moved on a day. Old Ubuntu logs
  (2004-2007) were written with a *12-hour* clock and no AM/PM (`11:59` -> `00:00`, `12:59` -> `01:00`
  at noon as well as at midnight): while a file has shown no hour above 12, a wrap from 11/12 o'clock
  to 0/1 o'clock moves on 12 hours rather than 24. Timestamps never decrease within a file.
- Minute precision: many messages share a timestamp; file order is kept by `read_unit`.
- Lines without a timestamp (the Ubuntu logs' `===` lines) take the time of the line before.
- The old Ubuntu logger wrote `/me` actions as `=== nick does something`, beside its real system
  events (`=== nick [user@host]  has joined #ubuntu`): a `===` line is a system event when it has the
  shape of one (join/leave/quit, nick change, mode, topic, kick, netsplit), else an action.
- Bots talk like people (`<ubotu> ...`): a nick that ends in `bot`/`botu`/`bottu` (digits allowed) or
  `serv` (ChanServ, NickServ) is flagged `is_bot`; `data.bot_usernames` names others.
- Nick case: IRC nicks are case-insensitive, so `author_id` is the lower-cased nick.
- The channel: `opts.irc_channel` if set; else the channel most named by the file's join and notice
  lines (lower-cased: IRC channel names are case-insensitive); else a `#chan` in the file name; else `irc`.
- A line of no known shape is a bad record (`opts.bad`), named by file and line; blank lines are skipped.
  The 153 real Ubuntu logs have none.
"""

from __future__ import annotations

import calendar
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

# The common line, `[HH:MM] <nick> text` (and `[HH:MM:SS]`), gets one regex; the rest take the general path.
# `<-- nick has quit (bye >)` is a system line, not a message from "-- nick has quit (bye ".
_FAST_RE = re.compile(r"\[(\d\d):(\d\d)(?::(\d\d))?\] <(?!-- )([^>]+)> ?(.*)")
# Any timestamp prefix: optional brackets, optional date, optional seconds, fraction and offset.
_STAMP_RE = re.compile(
    r"\[?(?:(\d{4})-(\d\d)-(\d\d)[T ])?(\d\d?):(\d\d)(?::(\d\d)(?:[.,]\d+)?)?(Z|[+-]\d\d:?\d\d)?\]?[ \t]"
)
_MESSAGE_RE = re.compile(r"<(?!-- )([^>]+)> ?(.*)")
_ACTION_RE = re.compile(r"\* (\S+) ?(.*)")
_CHANNEL_NOTICE_RE = re.compile(r"-([^\s:!-][^\s:]*):(#\S*?)- ?(.*)")
_PRIVATE_NOTICE_RE = re.compile(r"-([^\s:!-][^\s:()]*)(?:\([^)]*\))?- ?(.*)")
_PAREN_NOTICE_RE = re.compile(r"\(([^\s/()]+)/(#[^\s)]*)\) ?(.*)")
_SYSTEM_PREFIXES = ("-!- ", "--> ", "<-- ", "*** ", "-- ")
# The old Ubuntu logger's real system events after `=== ` (anything else there is a /me action).
# Nicks in that corpus may hold a space (`A[D] minS`), so the shapes key on what follows the nick.
_EQ_SYSTEM_RE = re.compile(
    r"\] +has (?:joined|left|quit)\b| is now known as |^mode/|^\.\.\[topic/|^Topic (?:for|\()"
    r"| changed the topic of | was kicked off |^net(?:joined|split)"
)
_MONTHS = {name: number for number, name in enumerate(calendar.month_abbr) if name}
# irssi: `--- Log opened Tue Jan 01 12:00:00 2020`, `--- Day changed Wed Jan 02 2020`.
_IRSSI_DATE_RE = re.compile(r"\b(" + "|".join(_MONTHS) + r")\s+(\d{1,2})\s+(?:\d\d:\d\d(?::\d\d)?\s+)?(\d{4})\b")
_FILE_DATE_RE = re.compile(r"(?<!\d)(\d{4})-(\d\d)-(\d\d)(?!\d)|_(\d{4})(\d\d)(\d\d)(?!\d)")
# Where a log names its channel: the first `#chan` of a system line (join, part, mode, topic, kick), or a
# channel notice. Matched from the line start, so that a pasted "* x has joined #other" inside a
# `<nick>` message does not count.
_CHANNEL_HINT_RE = re.compile(
    r"[^<]{0,40}?(?:(?:=== |-!- |--> |<-- |\*\*\* )[^#]*(#[^\s,:\]\)\x07]+)"
    r"|-[^\s:!<>-][^\s:<>]*:(#\S+?)- |\([^\s/()<>]+/(#[^\s)]+)\) )"
)
# `#ubuntu.log`, `#ubuntu.2020-01-01.log`, `freenode_#ubuntu_20200101.log`, or a folder `#ubuntu`.
_PATH_CHANNEL_RE = re.compile(r"(#[^\s/\\]+?)(?:[._-]\d{4}-?\d\d-?\d\d.*)?(?:\.(?:log|txt))?$", re.IGNORECASE)
# How many files of a folder to look through for the channel their lines name (see `_folder_channel`).
_FOLDER_SCAN_FILES = 64
_FOLDER_SCAN_VOTES = 5
# Nicks of bots and services: ubotu, ubottu, ubot3, FloodBot1, mikebot, ChanServ, NickServ.
_BOT_NICK_RE = re.compile(r"(?:bot+u?\d*_*|serv)$", re.IGNORECASE)
_NICK_MODES = "@+%&~"


def looks_like_irc(first_line: str) -> bool:
    """Whether a file's first non-blank line has one of the shapes this reader knows (for `_sniff`)."""
    line = first_line.strip("\ufeff\r\n")
    stamp = _STAMP_RE.match(line)
    body = line[stamp.end():].lstrip(" ") if stamp else line
    return _classify(body)[0] != "unknown"


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
        m = _ACTION_RE.match(body)
        if m:
            return "action", m.group(1), m.group(2)
    elif first == "-":
        if body.startswith("--- "):
            return "marker", "", body[4:]
        m = _CHANNEL_NOTICE_RE.match(body) or _PRIVATE_NOTICE_RE.match(body)
        if m:
            return "notice", m.group(1), m.group(m.lastindex)
    elif first == "(":
        m = _PAREN_NOTICE_RE.match(body)
        if m:
            return "notice", m.group(1), m.group(3)
    return "unknown", "", body


class _Clock:
    """Turns the times of one file into epoch seconds that never go backwards.

    `base` is the epoch of the current day's midnight plus the rollovers so far; a time-only stamp is
    `base + seconds into the day`.
    """

    __slots__ = ("base", "prev", "max_hour", "last")

    def __init__(self, day_epoch: float):
        self.set_day(day_epoch)
        self.max_hour = -1
        self.last = float(day_epoch)

    def set_day(self, day_epoch: float) -> None:
        self.base = day_epoch
        self.prev = -1

    def at(self, hour: int, minute: int, second: int) -> float:
        secs = hour * 3600 + minute * 60 + second
        if secs < self.prev:
            # A 12-hour clock wraps at 12 o'clock (written 12 or 00) into 1 (or 0) o'clock.
            twelve_hour = self.max_hour <= 12 and self.prev >= 11 * 3600 and secs < 2 * 3600
            self.base += HALF_DAY if twelve_hour else DAY
        self.prev = secs
        if hour > self.max_hour:
            self.max_hour = hour
        ts = self.base + secs
        # Within a file time only moves forwards (a full-dated line may not agree with the file name).
        if ts < self.last:
            ts = self.last
        self.last = ts
        return ts

    def at_date(self, year: int, month: int, day: int, hour: int, minute: int, second: int, offset_s: int) -> float:
        day_epoch = calendar.timegm((year, month, day, 0, 0, 0))
        self.set_day(day_epoch - offset_s)
        return self.at(hour, minute, second)


def _offset_seconds(tz: str | None) -> int:
    if not tz or tz == "Z":
        return 0
    sign = -1 if tz[0] == "-" else 1
    digits = tz[1:].replace(":", "")
    return sign * (int(digits[:2]) * 3600 + int(digits[2:4]) * 60)


def _file_day(name: str) -> float:
    """Midnight UTC of the date in the file name, or 0 (1970-01-01) when it names none."""
    for m in _FILE_DATE_RE.finditer(name):
        year, month, day = (int(g) for g in (m.groups()[:3] if m.group(1) else m.groups()[3:]))
        if 1 <= month <= 12 and 1 <= day <= 31:
            return float(calendar.timegm((year, month, day, 0, 0, 0)))
    return 0.0


def _named_channel(lines: list[str]) -> str | None:
    """The channel a log's own system and notice lines name most often among their first 50 hits."""
    hints: Counter[str] = Counter()
    seen = 0
    for line in lines:
        # Most lines name no channel: the cheap test spares the regex (a whole-text regex costs 10x).
        if "#" in line:
            m = _CHANNEL_HINT_RE.match(line)
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
            return m.group(1).lower()
    try:
        mtime_ns = path.parent.stat().st_mtime_ns
    except OSError:
        return "irc"
    return _folder_channel(str(path.parent), path.suffix, mtime_ns) or "irc"


def _lines(path: Path, opts: ReadOptions) -> list[str]:
    """The file's lines; an undecodable line is reported and left blank (so skipped)."""
    from fizzbot.data.formats import read_bytes

    raw = read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Slow path, for the rare file with bad bytes: report each bad line, keep the others.
        lines = []
        for number, chunk in enumerate(raw.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
            try:
                lines.append(chunk.decode("utf-8").rstrip("\r"))
            except UnicodeDecodeError as exc:
                opts.bad(InputError(f"not UTF-8 (byte {exc.start} of the line)", path=str(path), line=number))
                lines.append("")
        return lines
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    return text.split("\n")


def read(unit: "SourceUnit", opts: ReadOptions) -> Iterator[Message]:
    path = Path(unit.path)
    label = str(path)
    lines = _lines(path, opts)
    channel = _channel(lines, path, opts)
    clock = _Clock(_file_day(path.name))
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
            ts = clock.at(int(hh), int(mm), int(ss) if ss else 0)
            username, author_id, is_bot = nicks.get(raw_nick) or who(raw_nick)
            # Positional: keywords cost 0.25 s per million messages. Fields: channel, author_id,
            # username, content, ts, order, is_bot, is_system, format (the shape tests pin them).
            yield Message(channel, author_id, username, clean_content(body, max_chars), ts, 0, is_bot, False, FORMAT)
            continue

        stamp = _STAMP_RE.match(line)
        if stamp is not None:
            year, month, day, hh, mm, ss, tz = stamp.groups()
            second = int(ss) if ss else 0
            if year:
                ts = clock.at_date(int(year), int(month), int(day), int(hh), int(mm), second, _offset_seconds(tz))
            else:
                ts = clock.at(int(hh), int(mm), second)
            body = line[stamp.end():].lstrip(" \t")
        else:
            ts = clock.last
            body = line
        kind, raw_nick, content = _classify(body)
        if kind == "message" or kind == "action" or kind == "notice":
            username, author_id, is_bot = nicks.get(raw_nick) or who(raw_nick)
            if kind == "action":
                content = "/me " + content if content else ""
            yield Message(
                channel, author_id, username, clean_content(content, max_chars), ts,
                is_bot=is_bot or kind == "notice", format=FORMAT,
            )
        elif kind == "system":
            nick = raw_nick.strip()
            yield Message(channel, nick.lower(), nick, clean_content(content, max_chars), ts, is_system=True, format=FORMAT)
        elif kind == "marker":
            date = _IRSSI_DATE_RE.search(content)
            if date is not None:
                month_name, day, year = date.groups()
                clock.set_day(calendar.timegm((int(year), _MONTHS[month_name], int(day), 0, 0, 0)))
        elif line.strip():
            opts.bad(InputError(f"not an IRC line of a known shape: {line[:80]!r}", path=label, line=number))
