"""IRC for the bot: jaraco's `irc` library (its asyncio client) carries the protocol; this file only
turns its events into `ChatEvent`s and posts the core's answers.

    fizzbot bot --config configs/bot_irc.yaml
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl

from fizzbot.bot.core import BotCore, ChatEvent, Stop
from fizzbot.config import BotConfig

logger = logging.getLogger("fizzbot.bot.irc")

# A PRIVMSG line is at most 512 bytes with its prefix and command: keep each text well inside.
MAX_LINE_BYTES = 400


def split_for_irc(text: str, limit: int = MAX_LINE_BYTES) -> list[str]:
    """Lines of at most `limit` UTF-8 bytes, broken at spaces where possible, never inside a character."""
    out: list[str] = []
    for line in text.splitlines():
        while len(line.encode("utf-8")) > limit:
            cut = len(line.encode("utf-8")[:limit].decode("utf-8", errors="ignore"))
            space = line.rfind(" ", 0, cut)
            cut = space if space > cut // 2 else cut
            out.append(line[:cut].rstrip())
            line = line[cut:].lstrip()
        if line.strip():
            out.append(line)
    return out


class IrcBridge:
    def __init__(self, cfg: BotConfig, core: BotCore):
        self.cfg, self.core = cfg, core
        self.done: asyncio.Future | None = None
        self.connection = None
        self.joined: set[str] = set()

    async def run(self) -> None:
        import irc.client_aio
        import irc.connection

        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        reactor = irc.client_aio.AioReactor(loop=loop)
        connection = self.connection = reactor.server()
        for name, handler in (("welcome", self._on_welcome), ("join", self._on_join), ("pubmsg", self._on_pubmsg),
                              ("action", self._on_action), ("nicknameinuse", self._on_nick_in_use),
                              ("disconnect", self._on_disconnect)):
            connection.add_global_handler(name, handler)
        irc_cfg = self.cfg.irc
        factory = irc.connection.AioFactory(ssl=ssl.create_default_context()) if irc_cfg.tls else irc.connection.AioFactory()
        password = os.environ.get(irc_cfg.password_env) if irc_cfg.password_env else None
        logger.info("connecting to %s:%d as %s", irc_cfg.host, irc_cfg.port, self.cfg.nick)
        await connection.connect(irc_cfg.host, irc_cfg.port, self.cfg.nick, password=password,
                                 ircname=irc_cfg.realname, connect_factory=factory)
        try:
            await self.done
        finally:
            if connection.is_connected():
                connection.disconnect("fizzbot stopping")

    # --- events from the library (called on the event loop) ------------------------------------------
    def _on_welcome(self, connection, event) -> None:
        for channel in self.cfg.channels:
            connection.join(channel)

    def _on_join(self, connection, event) -> None:
        if event.source.nick == connection.get_nickname():
            self.joined.add(event.target.lower())
            logger.info("joined %s", event.target)

    def _on_nick_in_use(self, connection, event) -> None:
        connection.nick(connection.get_nickname() + "_")

    def _on_disconnect(self, connection, event) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def _on_pubmsg(self, connection, event) -> None:
        self._dispatch(connection, event.target, event.source.nick, event.arguments[0])

    def _on_action(self, connection, event) -> None:
        if event.target.startswith(("#", "&")):  # "/me waves" in a channel reads as a message
            self._dispatch(connection, event.target, event.source.nick, f"* {event.source.nick} {event.arguments[0]}")

    def _dispatch(self, connection, channel: str, nick: str, text: str) -> None:
        mine = connection.get_nickname()
        chat_event = ChatEvent(channel=channel, author=nick, content=text, is_self=nick.lower() == mine.lower(),
                               mentions_bot=mine.lower() != self.cfg.nick.lower() and mine.lower() in text.lower())
        asyncio.ensure_future(self._handle(connection, chat_event))

    async def _handle(self, connection, chat_event: ChatEvent) -> None:
        try:
            reply = await self.core.handle(chat_event)
        except Stop as stop:
            logger.info("%s", stop)
            connection.quit("stopped by an owner")
            if not self.done.done():
                self.done.set_result(None)
            return
        if reply is None:
            return
        for line in reply.lines:
            for part in split_for_irc(line):
                connection.privmsg(chat_event.channel, part)
