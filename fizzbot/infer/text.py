"""Token ids -> text as a request generates, and stop strings: one rule for streamed and whole answers.

A row's text grows one token at a time. Decoding the whole sequence again at every step costs
O(length) per token (the old engine did, and it was a large share of a 256-row GPU step), so
`TextStream` decodes incrementally: byte-level BPE tokenizers (Qwen's, the tiny model's) map every
id to fixed bytes, and a UTF-8 incremental decoder joins them, holding back a character's missing
bytes; other tokenizers decode a short window around the new token (vLLM's prefix/read offsets).

Stop strings: the text is cut before the first occurrence of any stop. While streaming, the end of
the text that could still be the start of a stop is held back, so the streamed deltas always add up
to exactly the whole answer: streamed and non-streamed text are the same bytes.
"""

from __future__ import annotations

import codecs
from typing import Sequence


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the others for chars from 256 up."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def _byte_table(tokenizer) -> list[bytes] | None:
    """Bytes of every id for a byte-level BPE tokenizer (added tokens: their text); None otherwise."""
    try:
        decoder = tokenizer.backend_tokenizer.decoder
    except AttributeError:
        return None
    if decoder is None or type(decoder).__name__ != "ByteLevel":
        return None
    to_byte = {char: byte for byte, char in _bytes_to_unicode().items()}
    added = {token.content for token in getattr(tokenizer, "added_tokens_decoder", {}).values()}
    table: list[bytes] = []
    for piece in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))):
        if piece is None:
            table.append(b"")
        elif piece in added or any(ch not in to_byte for ch in piece):
            table.append(piece.encode("utf-8"))
        else:
            table.append(bytes(to_byte[ch] for ch in piece))
    # Trust the table only where it reproduces the tokenizer's own decoding.
    probe = tokenizer("héllo wörld 😀 <EOT>\n  two  spaces", add_special_tokens=False)["input_ids"]
    probe += [i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None]
    if b"".join(table[i] for i in probe).decode("utf-8", "replace") != tokenizer.decode(probe, skip_special_tokens=False):
        return None
    return table


class Detokenizer:
    """What the engine decodes with: one per tokenizer, shared by every row that uses it."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.table = _byte_table(tokenizer)

    def stream(self) -> "TextStream":
        return TextStream(self)


class TextStream:
    """The text of one row's generated ids, built as they come."""

    WINDOW = 6  # ids decoded before the new one, for tokenizers without a byte table

    def __init__(self, detokenizer: Detokenizer):
        self.detokenizer = detokenizer
        self.text = ""
        self.ids: list[int] = []
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace") if detokenizer.table is not None else None
        self._prefix = 0  # window start (non-byte tokenizers)
        self._read = 0  # ids already turned into text

    def add(self, token: int) -> str:
        """Append one id; returns the text it completed (possibly "")."""
        self.ids.append(token)
        if self._utf8 is not None:
            table = self.detokenizer.table
            new = self._utf8.decode(table[token] if 0 <= token < len(table) else b"")
        else:
            decode = self.detokenizer.tokenizer.decode
            before = decode(self.ids[self._prefix:self._read], skip_special_tokens=False)
            after = decode(self.ids[self._prefix:], skip_special_tokens=False)
            if len(after) <= len(before) or after.endswith("\ufffd"):
                return ""  # half of a character: wait for the rest
            new = after[len(before):]
            self._prefix, self._read = max(self._prefix, self._read - self.WINDOW), len(self.ids)
        self.text += new
        return new

    def finish(self) -> str:
        """Flush a character left incomplete (as U+FFFD, the way a whole decode shows it)."""
        if self._utf8 is not None:
            new = self._utf8.decode(b"", final=True)
        else:
            decode = self.detokenizer.tokenizer.decode
            before = decode(self.ids[self._prefix:self._read], skip_special_tokens=False)
            new = decode(self.ids[self._prefix:], skip_special_tokens=False)[len(before):]
            self._read = len(self.ids)
        self.text += new
        return new


def find_stop(text: str, stops: Sequence[str], searched: int = 0) -> int:
    """Index of the earliest stop string in `text` (-1 if none); `searched` chars are known clean."""
    best = -1
    for stop in stops:
        if not stop:
            continue
        at = text.find(stop, max(0, searched - len(stop) + 1))
        if at >= 0 and (best < 0 or at < best):
            best = at
    return best


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters could still become the start of a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest
