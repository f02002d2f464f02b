"""Conversations in and out of the model: client messages -> the prompt text it was trained on, and
raw model text with speaker tokens -> `username: message` lines.

A served context follows the checkpoint's own rules (`ChatRules`, read from the `data` section of
the checkpoint's config): the same text cleaning and the same message and character budget as the
windows of `fizzbot prepare` (then the engine's token budget, the same rule as the training rows),
people who opted out kept anonymous or left out as in training, and a speaker the map does not know
taking the guest token (`unknown_speakers: guest`) or refused (`reject`).

Decoding splits on speaker tokens, not on <EOT>, so a model that has not learned <EOT> yet still
decodes: whatever follows `<Sk>` up to the next speaker token is k's message. The guest token reads
as the newcomer's name where the conversation had exactly one newcomer, else as `(others)`. With a
map whose others token is named (`data.name_others`), each guest message carries its author's name
in the prompt, and a guest message the model writes is read as the name it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from fizzbot.chat.render import ANONYMOUS, clean_text, split_messages, split_name, trim_context, with_name
from fizzbot.chat.speakers import SpeakerMap, UnknownSpeakers

NO_LIMIT = 1 << 62


@dataclass(frozen=True)
class ChatRules:
    """How a client's context becomes a prompt for one checkpoint."""

    unknown_speakers: UnknownSpeakers = "guest"
    # The checkpoint's data.max_context_messages / max_context_chars / max_message_chars (None: no limit).
    max_context_messages: int | None = None
    max_context_chars: int | None = None
    max_message_chars: int | None = None
    # data.exclude_speakers, case-folded, and data.exclude_mode.
    exclude_speakers: frozenset[str] = frozenset()
    exclude_mode: str = "anonymize"

    @classmethod
    def from_data_config(cls, data: Mapping, unknown_speakers: UnknownSpeakers = "guest") -> "ChatRules":
        """From a checkpoint's `data` config section (a mapping; missing keys mean no limit)."""
        return cls(
            unknown_speakers=unknown_speakers,
            max_context_messages=data.get("max_context_messages"),
            max_context_chars=data.get("max_context_chars"),
            max_message_chars=data.get("max_message_chars"),
            exclude_speakers=frozenset(str(name).strip().casefold() for name in data.get("exclude_speakers") or ()),
            exclude_mode=data.get("exclude_mode") or "anonymize",
        )

    def excludes(self, name: str) -> bool:
        return name.strip().casefold() in self.exclude_speakers


@dataclass
class Prompt:
    """A context as prompt text, what its budget left out, and who took the guest token in it."""

    text: str
    dropped: int = 0  # oldest messages the message/character budget left out
    guests: list[str | None] = field(default_factory=list)  # guest-token speakers kept: names; None: unnamed

    def speaker_names(self, speaker_map: SpeakerMap, forced_guest: str | None = None) -> dict[str, str]:
        """token -> username for decoding the answer: the guest token reads as the one newcomer of
        this conversation (a forced unknown speaker counts) where there is exactly one."""
        table = speaker_map.token_to_username()
        guests = self.guests + ([forced_guest] if forced_guest else [])
        distinct: dict[str | None, str | None] = {}
        for guest in guests:  # one person whatever the case they wrote their name in; the first spelling shows
            distinct.setdefault(guest.casefold() if guest is not None else None, guest)
        if speaker_map.guest_token and len(distinct) == 1 and None not in distinct:
            table[speaker_map.guest_token] = next(iter(distinct.values()))
        return table


def encode_conversation(messages: Sequence[Mapping], speaker_map: SpeakerMap, rules: ChatRules = ChatRules()) -> Prompt:
    """[{username | name | speaker, content}] -> the prompt text, ending ready for the next speaker.

    A message marked `anonymous` (an OpenAI message without `name`) takes the guest token.
    Raises KeyError naming the message for a missing name, a bad token, or an unknown speaker under
    `reject`.
    """
    retired = {s.token for s in speaker_map.speakers if s.retired}
    tokens: list[str] = []
    contents: list[str] = []
    guests: list[tuple[str | None] | tuple[()]] = []
    for number, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, str):
            raise KeyError(f"message {number}: content must be a string")
        who = message.get("speaker") or message.get("username") or message.get("name")
        who = str(who).strip() if who is not None else ""
        if not who:
            if not message.get("anonymous"):
                raise KeyError(f"message {number}: needs a username (or a speaker token)")
            if rules.unknown_speakers == "reject":
                raise KeyError(f"message {number} has no name, and this server refuses unknown speakers (unknown_speakers: reject)")
            token, guest = speaker_map.require_guest(f"message {number} (no name)"), (None,)
        else:
            try:
                token, guest = _token_of(who, speaker_map, rules, retired)
            except KeyError as exc:
                raise KeyError(f"message {number}: {exc.args[0]}") from None
            if token is None:
                continue
        content = clean_text(content, rules.max_message_chars)
        if speaker_map.other_named and token == speaker_map.other_token and guest:
            # As in training: the long tail speaks under one token, each with their name in front.
            content = with_name(guest[0] or ANONYMOUS, content)
        tokens.append(token)
        contents.append(content)
        guests.append(guest)
    text, start = trim_context(
        tokens,
        contents,
        rules.max_context_messages or NO_LIMIT,
        rules.max_context_chars or NO_LIMIT,
    )
    return Prompt(text, start, [g[0] for g in guests[start:] if g])


def _token_of(who: str, speaker_map: SpeakerMap, rules: ChatRules, retired: set[str]) -> tuple[str | None, tuple]:
    """(token, guest identity) of a named speaker; (None, ()) for someone who opted out, under `drop`."""
    opted_out = rules.excludes(who)
    known = None if opted_out else speaker_map.lookup(who)
    if known is not None and known not in retired:
        return known, ()
    if known is None and not opted_out:  # someone new: the guest token, or the error under `reject`
        return speaker_map.token_for_name(who, rules.unknown_speakers), (who,)
    # Someone who opted out: anonymous under the guest token, or left out, as in training.
    if rules.exclude_mode == "drop":
        return None, ()
    return speaker_map.require_guest(f"speaker {who!r}"), (None,)


def speaker_to_force(name: str, speaker_map: SpeakerMap, rules: ChatRules = ChatRules()) -> tuple[str, str | None]:
    """The token a forced speaker speaks with, and their name where that token is the guest's.

    An unknown name speaks with the guest token (`guest`) and its answer carries that name; someone
    who opted out is never spoken as.
    """
    if rules.excludes(name):
        raise KeyError(f"{name.strip()!r} opted out (data.exclude_speakers): the model never speaks as them")
    token = speaker_map.lookup(name)
    if token is not None:
        if token in {s.token for s in speaker_map.speakers if s.retired}:
            raise KeyError(f"{token} is retired (its speaker opted out): the model never speaks as them")
        return token, None
    return speaker_map.token_for_name(name, rules.unknown_speakers), name.strip()


def tokens_to_forbid(names: Sequence[str], speaker_map: SpeakerMap, rules: ChatRules = ChatRules()) -> tuple[str, ...]:
    """Tokens never to speak as. An unknown name forbids the guest token (the only one it could
    speak with, so the long tail goes with it); someone who opted out is never spoken as anyway."""
    tokens = [speaker_map.token_for_name(name, rules.unknown_speakers) for name in names if not rules.excludes(name)]
    return tuple(dict.fromkeys(tokens))


# --- decoding ------------------------------------------------------------------------------------------


@dataclass
class DecodedMessage:
    token: str
    username: str
    content: str

    def to_json(self) -> dict:
        return {"username": self.username, "content": self.content, "speaker": self.token}


def decode(text: str, speaker_map: SpeakerMap, names: Mapping[str, str] | None = None, first_speaker: str | None = None) -> list[DecodedMessage]:
    """Raw text -> messages. `names` (Prompt.speaker_names) says who the guest token is; a forced
    unknown `first_speaker` names the first message when it is the guest's. A named others token's
    message reads as the name it starts with."""
    names = names if names is not None else speaker_map.token_to_username()
    messages = []
    for token, content in split_messages(text):
        username = names.get(token, token)
        if speaker_map.other_named and token == speaker_map.other_token:
            written, rest = split_name(content)
            if written is not None:
                username, content = written, rest
        messages.append(DecodedMessage(token, username, content))
    if first_speaker and messages and messages[0].token == speaker_map.guest_token and text.lstrip().startswith(messages[0].token):
        messages[0].username = first_speaker
    return messages


def format_lines(messages: list[DecodedMessage]) -> str:
    return "\n".join(f"{m.username}: {m.content}" for m in messages)

