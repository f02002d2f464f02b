"""Cleaning: the filters that decide which messages a model should learn from, and PII scrubbing.

Per-message filters (`drop_reason`, after `apply_placeholder`) run where a file is read; duplicates
(the same message in two overlapping exports) and floods need a channel's messages in time order,
so they run on the merged, sorted stream (`duplicate_flags`, `FloodFilter`). Every drop is counted
under its reason, per channel, and shows up in stats.json.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from fizzbot.data.messages import Message

# Order matters only for counting: a bot's empty message counts as "bot".
DROP_REASONS = ("system", "bot", "attachment", "empty", "url_only", "mention_only", "duplicate", "flood")

_URL = r"(?:<?(?:https?|ftp)://[^\s>]+>?|www\.[^\s]+)"
_URL_ONLY_RE = re.compile(rf"^(?:\s*{_URL}[\s,;]*)+$", re.IGNORECASE)
# `@name` in any format after the readers' normalisation (Slack `<@U1>`, Discord `<@1>` become `@name`).
_AT_MENTION = r"@[\w.\-|\[\]`^{}]+"
# IRC addresses people as `nick:` or `nick,` at the start of a line.
_IRC_ADDRESS = r"[A-Za-z_\[\]\\`^{}|][\w\-\[\]\\`^{}|]*[:,]"
_MENTION_ONLY_RE = {
    "irc": re.compile(rf"^(?:\s*(?:{_AT_MENTION}|{_IRC_ADDRESS})[\s,:;!?.]*)+$"),
}
_DEFAULT_MENTION_ONLY_RE = re.compile(rf"^(?:\s*{_AT_MENTION}[\s,:;!?.]*)+$")

_EMAIL_RE = re.compile(r"\b[\w.+\-~]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+\b")
_IPV4_RE = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")
# Eight groups in full, or compressed with `::` (`fe80::1`, `::1`); a compressed one must hold a digit,
# so that `Foo::bar` stays. Clock times (`12:30:45`) are not addresses.
_H16 = r"[0-9A-Fa-f]{1,4}"
_IPV6_RE = re.compile(
    rf"(?<![\w:])(?:(?:{_H16}:){{7}}{_H16}|(?=[\w:]*\d)(?:{_H16}(?::{_H16}){{0,6}})?::(?:{_H16}(?::{_H16}){{0,6}})?)(?![\w:])"
)
# International or North-American shapes with separators; bare digit runs (ids, versions) are left alone.
_PHONE_RE = re.compile(r"(?<![\w.])(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{2,4}\)[\s.\-]?|\d{2,4}[\s.\-])\d{3,4}[\s.\-]\d{3,4}(?![\w.])")


def is_url_only(content: str) -> bool:
    return bool(_URL_ONLY_RE.match(content))


def is_mention_only(content: str, fmt: str) -> bool:
    pattern = _MENTION_ONLY_RE.get(fmt, _DEFAULT_MENTION_ONLY_RE)
    return bool(pattern.match(content))


def apply_placeholder(message: Message, placeholders: dict[str, str] | None) -> bool:
    """An attachment-only message takes its kind's placeholder text (`placeholders` None: it stays
    empty, to be dropped as `attachment`). Whether it became a placeholder."""
    if message.attachment is None or message.content or placeholders is None or message.is_system:
        return False
    message.content = placeholders.get(message.attachment) or placeholders["file"]
    return True


def drop_reason(message: Message, *, drop_bots: bool, bot_usernames: frozenset[str]) -> str | None:
    """The reason to drop one message on its own merits, or None to keep it."""
    if message.is_system:
        return "system"
    if drop_bots and (message.is_bot or message.username.lower() in bot_usernames):
        return "bot"
    content = message.content
    if not content:
        return "attachment" if message.attachment is not None else "empty"
    if ("://" in content or "www." in content) and is_url_only(content):
        return "url_only"
    if ("@" in content or ":" in content or "," in content) and is_mention_only(content, message.format):
        return "mention_only"
    return None


def scrub_pii(text: str) -> str:
    """E-mail addresses (and IRC hostmasks, which share their shape), IP addresses, phone numbers."""
    if "@" in text:
        text = _EMAIL_RE.sub("[email]", text)
    if any(ch.isdigit() for ch in text):
        text = _IPV4_RE.sub("[ip]", text)
        text = _PHONE_RE.sub("[phone]", text)
    if ":" in text:
        text = _IPV6_RE.sub("[ip]", text)
    return text


def _flood_key(content: str) -> str:
    return " ".join(content.lower().split())


@dataclass
class FloodFilter:
    """Flags one text posted by `min_authors` different authors within `window_s` seconds.

    Streaming over a channel in time order; every message of a flood is dropped, the first included,
    since the first copy of spam is as much spam as the rest. Short texts ("lol", "thanks") are
    ordinary chat when several people say them, so texts under `min_chars` never count.
    """

    min_authors: int
    window_s: float
    min_chars: int = 10

    def flags(self, messages: list[Message]) -> list[bool]:
        """Whether each message (time-ordered) belongs to a flood."""
        flagged = [False] * len(messages)
        recent: dict[str, deque] = {}
        for index, message in enumerate(messages):
            if len(message.content) < self.min_chars:
                continue
            key = _flood_key(message.content)
            window = recent.get(key)
            if window is None:
                window = recent[key] = deque()
            window.append((message.ts, message.author_id, index))
            while window and window[0][0] < message.ts - self.window_s:
                window.popleft()
            if len({author for _, author, _ in window}) >= self.min_authors:
                for _, _, member in window:
                    flagged[member] = True
            # Forget keys that went quiet, so memory follows the window rather than the channel.
            if index % 4096 == 0:
                horizon = message.ts - self.window_s
                for stale in [k for k, w in recent.items() if not w or w[-1][0] < horizon]:
                    del recent[stale]
        return flagged


def duplicate_flags(runs: list[list[Message]], merged: list[Message]) -> list[bool] | None:
    """Whether each message of a channel's merged, time-ordered stream repeats one read from another unit.

    Overlapping exports of one channel hold the same messages twice. A message is the same as another
    when their export ids agree, or, where the export has none, their author, time and text; only copies
    from *different* units (files, day files) count, since within one file two equal lines at a
    minute's precision are two messages. Where one unit holds a message k times and another j times,
    max(k, j) are kept. Only the time spans where runs of different units overlap are looked at, so a
    channel read from one file, or from day files that do not overlap, costs nothing. None: no
    duplicate is possible.
    """
    spans = [(run[0].order >> 32, run[0].ts, run[-1].ts) for run in runs if run]
    windows = []
    for index, (unit_a, first_a, last_a) in enumerate(spans):
        for unit_b, first_b, last_b in spans[index + 1:]:
            if unit_a != unit_b and max(first_a, first_b) <= min(last_a, last_b):
                windows.append((max(first_a, first_b), min(last_a, last_b)))
    if not windows:
        return None
    windows.sort()
    merged_windows = [list(windows[0])]
    for lo, hi in windows[1:]:
        if lo <= merged_windows[-1][1]:
            merged_windows[-1][1] = max(merged_windows[-1][1], hi)
        else:
            merged_windows.append([lo, hi])
    flags = [False] * len(merged)
    seen: dict[tuple, dict[int, int]] = {}
    window = 0
    for index, message in enumerate(merged):
        ts = message.ts
        while window < len(merged_windows) and merged_windows[window][1] < ts:
            window += 1
        if window == len(merged_windows):
            break
        if ts < merged_windows[window][0]:
            continue
        key = ("id", message.msg_id) if message.msg_id is not None else (message.author_id, ts, message.content)
        per_unit = seen.setdefault(key, {})
        unit = message.order >> 32
        count = per_unit.get(unit, 0) + 1
        per_unit[unit] = count
        if count <= max((n for u, n in per_unit.items() if u != unit), default=0):
            flags[index] = True
    return flags
