"""Conversation segments and randomised context windows: the examples a model learns from.

A segment is a channel's run of messages with no silence longer than the configured gap; nothing
crosses a segment boundary. Every message of a segment is a target once: the first (the opener) with
an empty context (with `openers`), the others from the `min_context_messages`-th on with the k
messages before them as context, k drawn uniformly from the configured bounds, then trimmed from the
oldest end to the character budget. The draw is seeded by the segment's identity, not by the order
work is done in, so any sharding gives the same examples; openers and messages that may not be
targets (people who opted out) draw nothing or draw and are skipped, so neither moves another
target's window.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Iterator

from fizzbot.chat.render import clip_line, context_start, line_prefix, render
from fizzbot.data.messages import Message


@dataclass(frozen=True)
class WindowSettings:
    min_context: int
    max_context: int
    max_context_chars: int
    seed: int
    openers: bool = True  # the first message of a segment is a target with an empty context


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


def _windows(
    segment: list[Message], rendered: list[str], tokens: list[str], settings: WindowSettings, targets: list[bool] | None
) -> Iterator[tuple[int, int, str | None]]:
    """(target index, context start, clipped context line or None) for every target of a segment;
    `targets[i]` False: message i is context only."""
    rng = random.Random(f"{settings.seed}:{segment_id(segment)}")
    lo, span = settings.min_context, settings.max_context - settings.min_context + 1
    budget = settings.max_context_chars
    prefix = line_prefix(rendered)
    if settings.openers and lo > 0 and segment and (targets is None or targets[0]):
        yield 0, 0, None  # the opener: no draw, so the other targets' windows do not move
    for index in range(lo, len(segment)):
        k = min(lo + int(rng.random() * span), index)
        if targets is not None and not targets[index]:
            continue
        start = context_start(prefix, index, k, budget)
        clipped = None
        if index > start and prefix[index] - prefix[start] > budget:
            clipped = clip_line(tokens[start], segment[start].content, budget)
        yield index, start, clipped


def window_segment(
    segment: list[Message],
    tokens: list[str],
    settings: WindowSettings,
    val_from: int,
    targets: list[bool] | None = None,
) -> Iterator[tuple[bool, dict]]:
    """(is_validation, example row) for every target of one segment.

    `tokens[i]` is the speaker token of `segment[i]`; targets at index >= `val_from` are validation
    targets; `targets[i]` False keeps message i out of the targets. Contexts only ever hold earlier
    messages of the same segment.
    """
    rendered = [render(token, message.content) for token, message in zip(tokens, segment)]
    for index, start, clipped in _windows(segment, rendered, tokens, settings, targets):
        if clipped is None:
            context = "".join(line + "\n" for line in rendered[start:index])
        else:
            context = clipped + "\n" if clipped else ""
        message = segment[index]
        row = {
            "context": context,
            "target": rendered[index],
            "channel": message.channel,
            "speaker": tokens[index],
            "ts": round(message.ts, 3),
        }
        yield index >= val_from, row


def window_segment_jsonl(
    segment: list[Message],
    tokens: list[str],
    settings: WindowSettings,
    val_from: int,
    targets: list[bool] | None = None,
) -> Iterator[tuple[bool, str]]:
    """The rows of `window_segment` as JSON lines, byte for byte what json.dumps writes for them.

    The hot path of `fizzbot prepare`: a message appears in up to max_context_messages contexts,
    so it is rendered and JSON-escaped once (escaping is per character: escape(a + b) equals
    escape(a) + escape(b)) and contexts are joined from the escaped pieces.
    """
    rendered = [render(token, message.content) for token, message in zip(tokens, segment)]
    pieces = [encode_basestring(line + "\n")[1:-1] for line in rendered]
    channel = encode_basestring(segment[0].channel)
    for index, start, clipped in _windows(segment, rendered, tokens, settings, targets):
        if clipped is None:
            context = '"' + "".join(pieces[start:index]) + '"'
        else:
            context = encode_basestring(clipped + "\n") if clipped else '""'
        line = (
            f'{{"context":{context},"target":{encode_basestring(rendered[index])},"channel":{channel},'
            f'"speaker":{encode_basestring(tokens[index])},"ts":{float.__repr__(round(segment[index].ts, 3))}}}'
        )
        yield index >= val_from, line
