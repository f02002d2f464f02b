"""One model's chat vocabulary: its tokenizer, speaker map and the ids the conversation grammar needs.

The grammar (enforced by masks, see sampling.py):

    prompt "\n" -> <Sk> (a speaker token: sampled among allowed speakers, or forced)
                -> message tokens (no speaker tokens) -> <EOT> -> "\n" -> next turn ...

Each adapter served on a shared base has its own ChatVocab: its own speaker map and its own chat
tokens (two communities' `<S3>` are different people, and may be different ids).
"""

from __future__ import annotations

import torch

from fizzbot.chat.render import trim_ids
from fizzbot.chat.speakers import SpeakerMap
from fizzbot.chat.tokens import EOT, SPEAKER_TOKEN_RE
from fizzbot.infer.text import Detokenizer


class EngineError(ValueError):
    """A request the engine cannot run (the server answers 400)."""


class PromptTooLong(EngineError):
    pass


class ChatVocab:
    def __init__(self, tokenizer, speaker_map: SpeakerMap, vocab: int, max_prompt_tokens: int):
        self.tokenizer = tokenizer
        self.speaker_map = speaker_map
        self.vocab = vocab  # logits width (the model's embedding rows, >= len(tokenizer))
        self.max_prompt_tokens = max_prompt_tokens
        self.speaker_ids = torch.tensor(tokenizer.convert_tokens_to_ids(speaker_map.tokens), dtype=torch.long)
        self.speaker_set = set(self.speaker_ids.tolist())
        # Retired tokens (people who opted out after an earlier map) are never spoken as.
        self.speakable_ids = torch.tensor(tokenizer.convert_tokens_to_ids(speaker_map.speakable_tokens), dtype=torch.long)
        self.eot_id = tokenizer.convert_tokens_to_ids(EOT)
        self.eos_id = tokenizer.eos_token_id
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos_id or 0)
        self.newline_ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
        self.detokenizer = Detokenizer(tokenizer)
        self._speaker_allowed: torch.Tensor | None = None
        self._message_allowed: torch.Tensor | None = None

    # --- masks over the logits --------------------------------------------------------------------
    def speaker_allowed(self) -> torch.Tensor:
        """Where a turn starts: the speaker tokens that may be spoken as (a host tensor; copy before changing it)."""
        if self._speaker_allowed is None:
            allowed = torch.zeros(self.vocab, dtype=torch.bool)
            allowed[self.speakable_ids] = True
            self._speaker_allowed = allowed
        return self._speaker_allowed

    def message_allowed(self) -> torch.Tensor:
        """Inside a message: anything but speaker tokens, pad, BOS and the embedding's spare rows."""
        if self._message_allowed is None:
            self._message_allowed = self._message_mask()
        return self._message_allowed

    def _message_mask(self) -> torch.Tensor:
        allowed = torch.ones(self.vocab, dtype=torch.bool)
        allowed[self.speaker_ids] = False
        never = [self.pad_id] + self.bos + list(range(len(self.tokenizer), self.vocab))
        never = [i for i in never if i is not None and i < self.vocab]
        if never:
            allowed[torch.tensor(never, dtype=torch.long)] = False
        allowed[self.eot_id] = True
        return allowed

    # --- tokens -----------------------------------------------------------------------------------
    def token_id(self, token: str) -> int:
        if not SPEAKER_TOKEN_RE.fullmatch(token) or token not in self.speaker_map.speakable_tokens:
            raise EngineError(f"unknown speaker token {token!r}")
        return self.tokenizer.convert_tokens_to_ids(token)

    def ends_at_turn_boundary(self, ids: list[int]) -> bool:
        """True where the next token must be a speaker token (empty prompt, or after <EOT> + newline)."""
        body = ids[len(self.bos):]
        if not body:
            return True
        if body[-1] == self.eot_id:
            return False  # the engine adds the newline first (see encode)
        tail = body[-len(self.newline_ids):] if self.newline_ids else []
        return tail == self.newline_ids and (len(body) == len(tail) or body[-len(tail) - 1] == self.eot_id)

    def encode(self, prompt: str, refuse_longer: bool = False) -> tuple[list[int], int]:
        """Prompt ids (BOS first), trimmed from the left by whole messages; and how many were dropped.
        `refuse_longer`: a prompt over max_prompt_tokens is refused (PromptTooLong) instead of trimmed."""
        text = prompt
        if text.rstrip(" ").endswith(EOT):
            text = text.rstrip(" ") + "\n"  # a finished message: the next token is a speaker
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if refuse_longer and len(ids) > self.max_prompt_tokens:
            raise PromptTooLong(f"prompt is {len(ids)} tokens, over this server's limit of {self.max_prompt_tokens}")
        # The same rule as the training rows (fizzbot.chat.render.trim_ids).
        ids, dropped = trim_ids(ids, self.max_prompt_tokens - len(self.bos), self.speaker_set)
        return self.bos + ids, dropped
