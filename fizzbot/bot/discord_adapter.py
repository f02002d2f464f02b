"""Discord for the bot: discord.py carries the gateway and the REST calls; this file turns its
`Message` objects into `ChatEvent`s and sends the core's answers.

    DISCORD_BOT_TOKEN=... fizzbot bot --config configs/bot_discord.yaml

The token is read from `bot.discord.token_env` (or `bot.discord.token_file`) and never logged.
The bot needs the "Message Content" privileged intent (the README gives the steps).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from fizzbot.bot.core import BotCore, ChatEvent, Reply, Stop
from fizzbot.config import BotConfig

logger = logging.getLogger("fizzbot.bot.discord")

MAX_MESSAGE_CHARS = 2000  # Discord's limit for one message


def read_token(cfg: BotConfig) -> str:
    token = os.environ.get(cfg.discord.token_env, "").strip()
    if not token and cfg.discord.token_file:
        path = Path(cfg.discord.token_file)
        if not path.is_file():
            raise FileNotFoundError(f"bot.discord.token_file={path}: no such file")
        token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(
            f"no Discord bot token: set the environment variable {cfg.discord.token_env} "
            "(or bot.discord.token_file) to the token of your bot application"
        )
    return token


class DiscordBridge:
    def __init__(self, cfg: BotConfig, core: BotCore):
        self.cfg, self.core = cfg, core
        self.client = None

    def channel_key(self, channel) -> str | None:
        """The allow-list entry this channel matches (its id, `name` or `#name`), or None."""
        name = getattr(channel, "name", None)
        for candidate in (str(channel.id), name, f"#{name}" if name else None):
            if candidate and self.core.allows(candidate):
                return candidate
        return None

    def event_of(self, message, me) -> ChatEvent | None:
        """A ChatEvent for a message in an allowed channel, None for any other."""
        channel = self.channel_key(message.channel)
        if channel is None:
            return None
        mentioned = me is not None and any(user.id == me.id for user in message.mentions)
        replied_to_me = False
        reference = getattr(message, "reference", None)
        resolved = getattr(reference, "resolved", None) if reference is not None else None
        if me is not None and resolved is not None and getattr(getattr(resolved, "author", None), "id", None) == me.id:
            replied_to_me = True
        content = message.content
        if me is not None:
            # "<@123> hi" reads as "fizzbot hi" to the core, which strips the address.
            content = re.sub(rf"<@!?{me.id}>", self.cfg.nick, content)
        content = _clean_mentions(message, content)
        return ChatEvent(
            channel=channel,
            author=getattr(message.author, "display_name", None) or message.author.name,
            author_id=str(message.author.id),
            content=content,
            ts=message.created_at.timestamp(),
            is_bot=bool(message.author.bot),
            is_self=me is not None and message.author.id == me.id,
            mentions_bot=mentioned or replied_to_me,
        )

    async def reply_for(self, message, me) -> Reply | None:
        event = self.event_of(message, me)
        if event is None:
            return None
        return await self.core.handle(event)

    async def run(self) -> None:
        import discord

        token = read_token(self.cfg)
        intents = discord.Intents.default()
        intents.message_content = True  # a privileged intent: switch it on in the developer portal
        client = self.client = discord.Client(intents=intents)

        @client.event
        async def on_ready() -> None:
            logger.info("logged in to Discord as %s", client.user)

        @client.event
        async def on_message(message) -> None:
            try:
                reply = await self.reply_for(message, client.user)
            except Stop as stop:
                logger.info("%s", stop)
                await client.close()
                return
            if reply is None:
                return
            text = "\n".join(reply.lines)
            for start in range(0, len(text), MAX_MESSAGE_CHARS):
                await message.channel.send(text[start:start + MAX_MESSAGE_CHARS])

        await client.start(token)


def _clean_mentions(message, content: str) -> str:
    """Other users' `<@id>` mentions as `@Name`, as DiscordChatExporter writes them (what training saw)."""
    for user in getattr(message, "mentions", []):
        name = getattr(user, "display_name", None) or user.name
        content = re.sub(rf"<@!?{user.id}>", f"@{name}", content)
    return content
