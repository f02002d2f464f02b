"""The bot's core, the same for every chat platform: what it remembers, when it speaks, what it says.

A platform adapter (IRC, Discord) turns its events into `ChatEvent`s and posts the lines that
`BotCore.handle` returns. The core keeps each allowed channel's recent messages (the context it
sends), decides whether to answer (addressed by name or mention; optionally, now and then, when the
channel is active), holds back for the channel's cooldown and the global rate limit, asks the
Serve endpoint (`POST /v1/generate`) and formats the answer with its persona shown. It never answers
itself or other bots, and only an owner's stop command stops it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from fizzbot.config import BotConfig

logger = logging.getLogger("fizzbot.bot")


@dataclass
class ChatEvent:
    """One message seen in a channel, as the platform adapter reports it."""

    channel: str
    author: str  # the name shown in the channel (IRC nick, Discord display name)
    content: str
    ts: float = field(default_factory=time.time)  # epoch seconds
    author_id: str | None = None  # a stable id where the platform has one (Discord user id)
    is_bot: bool = False  # flagged by the platform (Discord) or named in bot.ignore_nicks
    is_self: bool = False  # the bot's own message echoed back
    mentions_bot: bool = False  # a platform mention or a reply to the bot


@dataclass
class Reply:
    lines: list[str]
    persona: str
    content: str


class Stop(Exception):
    """An owner's stop command: the adapter disconnects and `fizzbot bot` exits."""


Ask = Callable[[dict], Awaitable[dict]]


def addressed_text(text: str, nick: str) -> str | None:
    """The message without its address when it speaks to `nick` ("nick: hi", "nick, hi", "@nick hi"),
    the whole message when it names `nick` elsewhere as a word, None when it does not name it."""
    pattern = re.compile(rf"^\s*@?{re.escape(nick)}\s*[:,>]?\s+", re.IGNORECASE)
    match = pattern.match(text)
    if match:
        return text[match.end():].strip() or text.strip()
    if re.search(rf"(?<![\w-])@?{re.escape(nick)}(?![\w-])", text, re.IGNORECASE):
        return text.strip()
    return None


class RateLimiter:
    """At most `limit` events in any `window` seconds (a sliding window of event times)."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self.times: deque[float] = deque()

    def allow(self) -> bool:
        now = self.clock()
        while self.times and now - self.times[0] >= self.window:
            self.times.popleft()
        return len(self.times) < self.limit

    def record(self) -> None:
        self.times.append(self.clock())


@dataclass
class ChannelState:
    messages: deque  # {"username", "content"} dicts, oldest first
    seen_at: deque  # monotonic times of recent people's messages, for "active"
    last_reply: float | None = None
    busy: bool = False  # a request for this channel is in flight


class ChannelLog:
    """Opt-in log of what people say, in the seed format `fizzbot prepare` reads: one JSON-lines file
    per channel of {"username", "content", "timestamp"} (ISO 8601, UTC)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, channel: str) -> Path:
        safe = re.sub(r"[^\w.-]+", "_", channel.lstrip("#")) or "channel"
        return self.folder / f"{safe}.jsonl"

    def write(self, event: ChatEvent) -> None:
        import datetime as dt

        row = {
            "username": event.author,
            "content": event.content,
            "timestamp": dt.datetime.fromtimestamp(event.ts, dt.timezone.utc).isoformat(),
        }
        if event.author_id:
            row["author_id"] = event.author_id
        # One line per write, appended and flushed: a crash loses at most the line being written.
        with open(self.path(event.channel), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def http_ask(cfg: BotConfig) -> Ask:
    """POST /v1/generate on the configured endpoint (aiohttp: the bot is asyncio end to end)."""
    import aiohttp

    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = cfg.endpoint.rstrip("/") + "/v1/generate"
    timeout = aiohttp.ClientTimeout(total=cfg.request_timeout_s)

    async def ask(body: dict) -> dict:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(url, json=body, headers=headers) as response:
                payload = await response.json(content_type=None)
                if response.status != 200:
                    message = (payload.get("error") or {}).get("message") if isinstance(payload, dict) else None
                    raise RuntimeError(f"{url} answered {response.status}: {message or payload}")
                return payload

    return ask


class BotCore:
    def __init__(self, cfg: BotConfig, ask: Ask | None = None, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None):
        if not cfg.channels:
            raise ValueError("bot.channels is empty: list the channels the bot may join (an allow-list)")
        self.cfg = cfg
        self.ask = ask or http_ask(cfg)
        self.clock = clock
        self.rng = rng or random.Random()
        self.allowed = {self._key(c) for c in cfg.channels}
        self.ignored = {n.lower() for n in cfg.ignore_nicks}
        self.owners = {o.lower() for o in cfg.owners}
        self.rate = RateLimiter(cfg.max_replies_per_minute, 60.0, clock)
        self.channels: dict[str, ChannelState] = {}
        self.log = ChannelLog(cfg.log_dir) if cfg.log_dir else None
        self.replies = 0

    @staticmethod
    def _key(channel: str) -> str:
        return channel.lower()

    def allows(self, channel: str) -> bool:
        return self._key(channel) in self.allowed

    def state(self, channel: str) -> ChannelState:
        key = self._key(channel)
        if key not in self.channels:
            self.channels[key] = ChannelState(deque(maxlen=self.cfg.context_messages), deque(maxlen=256))
        return self.channels[key]

    def is_owner(self, event: ChatEvent) -> bool:
        return event.author.lower() in self.owners or (event.author_id is not None and event.author_id.lower() in self.owners)

    async def handle(self, event: ChatEvent) -> Reply | None:
        """Take in one message; the answer to post in its channel, or None. Raises Stop."""
        cfg = self.cfg
        if not self.allows(event.channel) or event.is_self or event.author.lower() == cfg.nick.lower():
            return None
        if event.is_bot or event.author.lower() in self.ignored:
            return None  # other bots: neither answered nor part of the conversation the model sees
        if event.content.strip() == cfg.stop_command:
            if self.is_owner(event):
                raise Stop(f"stopped by {event.author} in {event.channel}")
            logger.info("ignored a stop command from %s (not an owner)", event.author)
            return None
        state = self.state(event.channel)
        stripped = addressed_text(event.content, cfg.nick)
        addressed = event.mentions_bot or stripped is not None
        # The model sees the message without "fizzbot:" in front: the name it was addressed by is
        # not part of the channel's own talk.
        content = stripped if stripped is not None else event.content.strip()
        if not content:
            return None
        state.messages.append({"username": event.author, "content": content})
        state.seen_at.append(self.clock())
        if self.log is not None:
            self.log.write(event)
        if not self._wants_to_speak(state, addressed):
            return None
        if state.busy or not self._may_speak(state):
            return None
        state.busy = True
        try:
            return await self._answer(event.channel, state)
        finally:
            state.busy = False

    def _wants_to_speak(self, state: ChannelState, addressed: bool) -> bool:
        cfg = self.cfg
        if addressed and cfg.reply_when_addressed:
            return True
        if cfg.chime_in_rate <= 0:
            return False
        now = self.clock()
        recent = sum(1 for t in state.seen_at if now - t <= cfg.active_window_seconds)
        return recent >= cfg.active_messages and self.rng.random() < cfg.chime_in_rate

    def _may_speak(self, state: ChannelState) -> bool:
        if state.last_reply is not None and self.clock() - state.last_reply < self.cfg.cooldown_seconds:
            return False
        return self.rate.allow()

    async def _answer(self, channel: str, state: ChannelState) -> Reply | None:
        cfg = self.cfg
        body: dict = {"context": list(state.messages), "turns": 1, "max_new_tokens": cfg.max_new_tokens,
                      "min_new_tokens": min(cfg.min_new_tokens, cfg.max_new_tokens)}
        if cfg.model:
            body["model"] = cfg.model
        if cfg.speak_as:
            body["speaker"] = cfg.speak_as
        if cfg.temperature is not None:
            body["temperature"] = cfg.temperature
        # The cooldown and the rate limit count from the attempt: a failing endpoint is not hammered.
        state.last_reply = self.clock()
        self.rate.record()
        try:
            answer = await self.ask(body)
        except Exception as exc:  # the channel goes on; the operator sees why in the log
            logger.warning("no answer for %s: %s", channel, exc)
            return None
        messages = [m for m in answer.get("messages", []) if m.get("content", "").strip()]
        if not messages:  # whitespace only, or bot.min_new_tokens=0 and an empty message
            logger.info("the model's answer for %s was empty: nothing posted", channel)
            return None
        persona, content = messages[0]["username"], messages[0]["content"].strip()
        state.messages.append({"username": persona, "content": content})
        self.replies += 1
        text = cfg.persona_format.format(username=persona, content=content)
        return Reply(lines=[line for line in text.splitlines() if line.strip()], persona=persona, content=content)


async def run_bot(cfg: BotConfig) -> int:
    """`fizzbot bot`: connect the configured platform's adapter to a core and run until stopped."""
    core = BotCore(cfg)
    if cfg.platform == "irc":
        from fizzbot.bot.irc_adapter import IrcBridge

        bridge = IrcBridge(cfg, core)
    else:
        from fizzbot.bot.discord_adapter import DiscordBridge

        bridge = DiscordBridge(cfg, core)
    await bridge.run()
    return 0


def main_loop(cfg: BotConfig) -> int:
    return asyncio.run(run_bot(cfg))
