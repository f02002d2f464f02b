"""The chat tokens: `<S0>`, `<S1>`, ... (one per speaker) and `<EOT>` (the end of a turn)."""

from __future__ import annotations

import re

EOT = "<EOT>"
SPEAKER_TOKEN_RE = re.compile(r"<S(\d+)>")
# Text that a user typed and that looks like one of our special tokens must not become one.
_SPECIAL_LOOKALIKE_RE = re.compile(r"<(S\d+|EOT)>")


def speaker_token(index: int) -> str:
    return f"<S{index}>"


def is_speaker_token(text: str) -> bool:
    return SPEAKER_TOKEN_RE.fullmatch(text) is not None


def speaker_index(token: str) -> int:
    return int(SPEAKER_TOKEN_RE.fullmatch(token).group(1))


def defuse_special_tokens(text: str) -> str:
    """A user who types "<S3>" or "<EOT>" must not produce a speaker change: "< S3>" reads the same."""
    if "<" not in text:
        return text
    return _SPECIAL_LOOKALIKE_RE.sub(lambda m: f"< {m.group(1)}>", text)
