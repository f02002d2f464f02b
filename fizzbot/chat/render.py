"""Rendering, parsing and trimming a conversation: the rules that training and serving share.

A message is `<Sk> text <EOT>`; a context is such lines, each ending in a newline, oldest first;
what follows a context is the next speaker's token. Two budgets trim a context, the same way
wherever a context is built (`fizzbot prepare`'s windows, the training rows, the server's prompts):

- in characters and messages (`data.max_context_chars`, `data.max_context_messages`):
  `context_start` keeps the newest messages that fit; a newest message that alone is over the
  budget keeps its speaker token and the end of its text (`clip_line`);
- in token ids (`training.max_seq_len`, `serve.max_prompt_tokens`): `trim_ids` drops whole messages
  from the oldest end; a newest message that alone is over the budget keeps its speaker token and
  its last ids.
"""

from __future__ import annotations

import re
from typing import Collection, Sequence

from fizzbot.chat.tokens import EOT, defuse_special_tokens

_SPLIT_RE = re.compile(r"(<S\d+>)")
ELLIPSIS = "…"


def clean_text(text: str, max_chars: int | None) -> str:
    """A message's text as the model sees it: edge whitespace off, typed look-alikes of special
    tokens defused, an over-long text cut to `max_chars` (`data.max_message_chars`)."""
    text = defuse_special_tokens(text.strip())
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars].rstrip() + " " + ELLIPSIS
    return text


# With data.name_others, a message under the shared others token starts with its author's name and
# this separator (`<S63> alice: text`): the long tail is no longer one faceless speaker.
NAME_SEPARATOR = ": "
ANONYMOUS = "(anonymous)"  # the name an opted-out author (data.exclude_mode: anonymize) speaks under


def clean_name(name: str) -> str:
    """A username as it is written before NAME_SEPARATOR: on one line, without the separator inside
    it, typed look-alikes of special tokens defused; never empty."""
    name = " ".join(defuse_special_tokens(name).split()).replace(NAME_SEPARATOR, ":").strip()
    return name or "?"


def with_name(name: str, content: str) -> str:
    """A long-tail message's text with its author's name in front."""
    return clean_name(name) + NAME_SEPARATOR + content


def split_name(content: str) -> tuple[str | None, str]:
    """(name, text) of a long-tail message written by `with_name`; (None, content) without a name."""
    name, separator, text = content.partition(NAME_SEPARATOR)
    name = name.strip()
    if not separator or not name or "\n" in name:
        return None, content
    return name, text.strip()


def render(token: str, content: str) -> str:
    """One message as the model sees it: `<Sk> text <EOT>`."""
    return f"{token} {content} {EOT}"


def context_text(lines: Sequence[str]) -> str:
    """Rendered messages as a context: one line each, every line ending in a newline."""
    return "".join(line + "\n" for line in lines)


def split_messages(text: str) -> list[tuple[str, str]]:
    """(speaker token, content) pairs; text before the first speaker token is dropped.

    Splits on speaker tokens, not on <EOT>, so a model that has not learned <EOT> yet still decodes.
    """
    parts = _SPLIT_RE.split(text)
    out = []
    for i in range(1, len(parts), 2):
        content = parts[i + 1] if i + 1 < len(parts) else ""
        content = content.replace(EOT, "").strip()
        out.append((parts[i], content))
    return out


# --- trimming in characters (context windows) ----------------------------------------------------------


def line_prefix(lines: Sequence[str]) -> list[int]:
    """prefix[i]: characters of lines 0..i-1 as a context (each line plus its newline)."""
    prefix = [0]
    for line in lines:
        prefix.append(prefix[-1] + len(line) + 1)
    return prefix


def context_start(prefix: Sequence[int], end: int, max_messages: int, max_chars: int) -> int:
    """First index of the context of message `end`: at most `max_messages` messages, oldest leave
    first until the context fits in `max_chars` (one message is always kept; see `clip_line`)."""
    start = max(0, end - max_messages)
    size = prefix[end] - prefix[start]
    while size > max_chars and end - start > 1:
        size -= prefix[start + 1] - prefix[start]
        start += 1
    return start


def clip_line(token: str, content: str, max_chars: int) -> str:
    """A message alone over the character budget: its speaker token and the end of its text
    ("" when the budget cannot hold even the token and a character)."""
    keep = max_chars - len(token) - len(EOT) - 6
    return render(token, ELLIPSIS + content[-keep:]) if keep > 0 else ""


def trim_context(tokens: Sequence[str], contents: Sequence[str], max_messages: int, max_chars: int) -> tuple[str, int]:
    """The context text of these messages under both budgets, and how many messages it left out."""
    lines = [render(t, c) for t, c in zip(tokens, contents)]
    end = len(lines)
    if not end:
        return "", 0
    prefix = line_prefix(lines)
    start = context_start(prefix, end, max_messages, max_chars)
    if prefix[end] - prefix[start] <= max_chars:
        return context_text(lines[start:]), start
    clipped = clip_line(tokens[start], contents[start], max_chars)
    return (clipped + "\n" if clipped else ""), start


# --- trimming in token ids (training rows, prompts) ---------------------------------------------------


def trim_ids(ids: Sequence[int], budget: int, speaker_ids: Collection[int]) -> tuple[list[int], int]:
    """At most `budget` ids of a context, and how many messages (speaker tokens) were dropped.

    Whole messages leave from the oldest end. When the newest message alone is over the budget, its
    speaker token is kept with its last `budget - 1` ids, so the model still sees who was speaking.
    """
    ids = list(ids)
    if len(ids) <= budget:
        return ids, 0
    if budget <= 0:
        return [], sum(1 for t in ids if t in speaker_ids)
    starts = [i for i, t in enumerate(ids) if t in speaker_ids]
    for n, start in enumerate(starts):
        if len(ids) - start <= budget:
            return ids[start:], n
    if not starts:
        return ids[len(ids) - budget:], 0
    last = starts[-1]
    kept = [ids[last]] + ids[len(ids) - budget + 1:] if budget > 1 else [ids[last]]
    return kept, len(starts) - 1
