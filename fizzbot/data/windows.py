"""Conversation segments and randomised context windows: the examples a model learns from.

A segment is a channel's run of messages with no silence longer than the configured gap; nothing
crosses a segment boundary. Every message of a segment (after the first `min_context_messages`) is a
target once; its context is the k messages before it, k drawn uniformly from the configured bounds,
then trimmed from the oldest end to the character budget. The draw is seeded by the segment's
identity, not by the order work is done in, so any sharding gives the same examples.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

from fizzbot.data.messages import EOT, Message


@dataclass(frozen=True)
class WindowSettings:
    min_context: int
    max_context: int
    max_context_chars: int
    seed: int


def split_segments(messages: list[Message], gap_seconds: float) -> list[list[Message]]:
    """Cut a time-ordered channel stream wherever the silence is longer than `gap_seconds`."""
    segments: list[list[Message]] = []
    current: list[Message] = []
    last_ts = None
    for message in messages:
        if last_ts is not None and message.ts - last_ts > gap_seconds:
            segments.append(current)
            current = []
        current.append(message)
        last_ts = message.ts
    if current:
        segments.append(current)
    return segments


def segment_id(segment: list[Message]) -> str:
    """Stable identity of a segment: its channel and first message's position in time and input."""
    first = segment[0]
    return f"{first.channel}@{first.ts:.3f}#{first.order}"


def render(token: str, content: str) -> str:
    """One message as the model sees it: `<Sk> text <EOT>`."""
    return f"{token} {content} {EOT}"


def window_segment(
    segment: list[Message],
    tokens: list[str],
    settings: WindowSettings,
    val_from: int,
) -> Iterator[tuple[bool, dict]]:
    """(is_validation, example row) for every target of one segment.

    `tokens[i]` is the speaker token of `segment[i]`; targets at index >= `val_from` are validation
    targets. Contexts only ever hold earlier messages of the same segment.
    """
    rng = random.Random(f"{settings.seed}:{segment_id(segment)}")
    rendered = [render(token, message.content) for token, message in zip(tokens, segment)]
    budget = settings.max_context_chars
    for index in range(settings.min_context, len(segment)):
        k = min(rng.randint(settings.min_context, settings.max_context), index)
        start = index - k
        # Oldest messages leave first until the context fits; +1 per message for the newline.
        size = sum(len(rendered[j]) + 1 for j in range(start, index))
        while size > budget and index - start > 1:
            size -= len(rendered[start]) + 1
            start += 1
        context_lines = rendered[start:index]
        if context_lines and size > budget:
            # One message alone is over budget: keep its speaker token and the end of its text.
            # A budget too small for even the token and a character of text leaves no context.
            token = tokens[start]
            keep = budget - len(token) - len(EOT) - 6
            context_lines = [render(token, "…" + segment[start].content[-keep:])] if keep > 0 else []
        message = segment[index]
        row = {
            "context": "".join(line + "\n" for line in context_lines),
            "target": rendered[index],
            "channel": message.channel,
            "speaker": tokens[index],
            "ts": round(message.ts, 3),
        }
        yield index >= val_from, row
