"""Decoding: raw model text with speaker tokens -> `username: message` lines, and back.

Decoding splits on speaker tokens, not on <EOT>, so a model that has not learned <EOT> yet still
decodes: whatever follows `<Sk>` up to the next speaker token is k's message.
"""

from __future__ import annotations

from dataclasses import dataclass

from fizzbot.chat.render import render, split_messages
from fizzbot.chat.speakers import SpeakerMap
from fizzbot.chat.tokens import defuse_special_tokens


@dataclass
class DecodedMessage:
    token: str
    username: str
    content: str

    def to_json(self) -> dict:
        return {"username": self.username, "content": self.content, "speaker": self.token}


def decode(text: str, speaker_map: SpeakerMap) -> list[DecodedMessage]:
    names = speaker_map.token_to_username()
    return [DecodedMessage(token, names.get(token, token), content) for token, content in split_messages(text)]


def format_lines(messages: list[DecodedMessage]) -> str:
    return "\n".join(f"{m.username}: {m.content}" for m in messages)


def encode_messages(messages: list[dict], speaker_map: SpeakerMap) -> str:
    """[{username|speaker, content}] -> the prompt text the model was trained on, ending ready for a speaker."""
    lines = []
    for number, message in enumerate(messages):
        who = message.get("speaker") or message.get("username") or message.get("name")
        if not who:
            raise KeyError(f"message {number}: needs a username (or a speaker token)")
        content = message.get("content")
        if not isinstance(content, str):
            raise KeyError(f"message {number}: content must be a string")
        token = speaker_map.resolve(str(who))
        lines.append(render(token, defuse_special_tokens(content.strip())) + "\n")
    return "".join(lines)

