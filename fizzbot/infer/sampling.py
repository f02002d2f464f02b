"""Sampling and the conversation grammar, on the device, for a whole batch at once.

Every row's decoding state lives in device tensors indexed by engine slot (`SlotState`): its phase
in the grammar (speaker token / message / done), turn and token counters, forced tokens, sampling
settings, seed and draw count, the tokens it has seen (repetition penalty) and its grammar masks.
`SlotState.sample` chooses the next token of a batch of slots and advances their state with tensor
operations only: no value comes back to the host, no branch depends on data, so the step can be
captured in a CUDA graph with the forward pass. The host reads one small [slots, 2] tensor per step
(`out`: the token each row appended, or -1, and why it finished).

A step, per row:
1. grammar: speaker tokens only at a turn start (minus forbidden speakers), none inside a message;
   no EOS there when `eos_stop` is off; no <EOT> or EOS before a turn has `min_new_tokens` (vLLM's
   `min_tokens`, per turn: a bot that must say something never gets an empty message);
2. repetition penalty (inside messages), temperature;
3. top-k / top-p over the 256 most probable tokens. A nucleus that does not fit in them (a very
   flat distribution) is sampled from the whole distribution instead: within 1 - top_p of the
   exact nucleus in total variation, and no data-dependent sort of the vocabulary;
4. a Gumbel-max draw whose noise is a counter-based hash of the row's seed, draw count and token
   id: a request draws the same tokens whatever it is batched with, with no per-row generator;
5. forced tokens win: the newline after <EOT>, <EOT> when a turn's budget is spent, the forced
   first speaker;
6. bookkeeping: phase changes, turn counts, the length budget, finish reasons.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

SPEAKER, MESSAGE, DONE = 0, 1, 2
RUNNING, STOP, LENGTH, EOS = 0, 1, 2, 3
FINISH_REASONS = {STOP: "stop", LENGTH: "length", EOS: "eos"}

# Columns of SlotState.ints.
(PHASE, TURNS_DONE, TURNS, TURN_TOKENS, MAX_NEW, NL_LEFT, NL_LEN, FORCE_EOT, FORCE_SPK, FINISH, LENGTH_PENDING,
 EOS_OK, EOS_ID, EOT_ID, GENERATED, PROMPT_LEN, LIMIT, KEY, DRAWS, VOCAB, MIN_NEW) = range(21)
INT_COLUMNS = 21
TEMPERATURE, TOP_P, PENALTY, TOP_K = range(4)
FLOAT_COLUMNS = 4
NUCLEUS_CANDIDATES = 256
MAX_NEWLINE_IDS = 4


@dataclass
class SamplingParams:
    max_new_tokens: int = 64  # per turn
    min_new_tokens: int = 0  # per turn: <EOT> and EOS are masked until a message has this many tokens
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    repetition_penalty: float = 1.1
    turns: int = 1
    eos_stop: bool = True
    seed: int | None = None
    force_speaker: str | None = None  # token of the first turn's speaker
    forbid_speakers: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()


# --- seeded noise ------------------------------------------------------------------------------------


def mix32(x: int) -> int:
    """lowbias32: a 32-bit integer hash (the same as hash32, in Python)."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding 32-bit values (products wrap; the low 32 bits are exact)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def seed_key(seed: int | None) -> int:
    """A row's 32-bit noise key from its seed (a random one without)."""
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") >> 1
    return mix32(seed & 0xFFFFFFFF) ^ mix32((seed >> 32) ^ 0x5BD1E995)


def gumbel_at(keys: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Gumbel noise of token `ids` [B, K] for rows with step keys `keys` [B]: a function of (key, id) only."""
    bits = hash32((ids * 0x9E3779B1 + keys[:, None]) & 0xFFFFFFFF)
    uniform = (bits.to(torch.float64) + 0.5) / 4294967296.0
    return (-torch.log(-torch.log(uniform))).to(torch.float32)


def gumbel_argmax_torch(scaled: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """argmax over the vocabulary of scaled logits + each token's Gumbel noise."""
    ids = torch.arange(scaled.shape[1], device=scaled.device, dtype=torch.int64)[None, :]
    return (scaled + gumbel_at(keys, ids)).argmax(dim=-1)


def gumbel_argmax(scaled: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    from fizzbot.infer import kernels

    if kernels.available(scaled.device):
        return kernels.gumbel_argmax(scaled, keys)
    return gumbel_argmax_torch(scaled, keys)


# --- the per-slot state ---------------------------------------------------------------------------------


class SlotState:
    """Decoding state of `slots` rows (plus one padding slot, the last) on the device."""

    def __init__(self, slots: int, vocab: int, device: torch.device, vocabs: list, max_vocabs: int = 1):
        self.slots, self.vocab, self.device = slots, vocab, device
        rows = slots + 1
        self.padding_slot = slots
        self.ints = torch.zeros(rows, INT_COLUMNS, dtype=torch.int64, device=device)
        self.ints[:, PHASE] = DONE
        self.floats = torch.ones(rows, FLOAT_COLUMNS, dtype=torch.float32, device=device)
        self.seen = torch.zeros(rows, vocab, dtype=torch.bool, device=device)
        self.speaker_mask = torch.zeros(rows, vocab, dtype=torch.bool, device=device)
        self.message_mask = torch.zeros(rows, vocab, dtype=torch.bool, device=device)
        self.last = torch.zeros(rows, dtype=torch.int64, device=device)  # next decode input
        self.positions = torch.zeros(rows, dtype=torch.int64, device=device)  # its position
        self.out = torch.full((rows, 2), -1, dtype=torch.int64, device=device)  # appended token (or -1), finish code
        self.candidates = min(NUCLEUS_CANDIDATES, vocab)
        self._arange_candidates = torch.arange(self.candidates, device=device)
        self.vocabs: list = []
        # One row per chat vocabulary (adapter), allocated once: a captured graph keeps these tensors.
        self._capacity = max(1, max_vocabs, len(vocabs))
        self.is_speaker = torch.zeros(self._capacity, vocab, dtype=torch.bool, device=device)
        self.newlines = torch.zeros(self._capacity, MAX_NEWLINE_IDS, dtype=torch.int64, device=device)
        for v in vocabs:
            self.add_vocab(v)

    def add_vocab(self, vocab) -> int:
        """Register a ChatVocab (an adapter's); returns its index."""
        index = len(self.vocabs)
        if index >= self._capacity:
            raise ValueError(f"room for {self._capacity} chat vocabularies (adapters) is full")
        if len(vocab.newline_ids) > MAX_NEWLINE_IDS:
            raise ValueError(f"the tokenizer encodes a newline as {len(vocab.newline_ids)} ids (at most {MAX_NEWLINE_IDS})")
        self.is_speaker[index].zero_()
        self.is_speaker[index, vocab.speaker_ids.to(self.device)] = True
        self.newlines[index].zero_()
        if vocab.newline_ids:
            self.newlines[index, : len(vocab.newline_ids)] = torch.tensor(vocab.newline_ids, device=self.device)
        self.vocabs.append(vocab)
        return index

    # --- rows joining ---------------------------------------------------------------------------
    def rows_for(self, entries: list) -> dict[str, torch.Tensor]:
        """Host tensors of the state of new rows: entries are (vocab index, prompt ids, params,
        forced speaker id or None, forbidden ids, starts at a speaker, row limit)."""
        n = len(entries)
        ints = torch.zeros(n, INT_COLUMNS, dtype=torch.int64)
        floats = torch.zeros(n, FLOAT_COLUMNS, dtype=torch.float32)
        seen = torch.zeros(n, self.vocab, dtype=torch.bool)
        speaker = torch.zeros(n, self.vocab, dtype=torch.bool)
        message = torch.zeros(n, self.vocab, dtype=torch.bool)
        for i, (vocab_index, prompt, p, force_id, forbidden, at_speaker, limit) in enumerate(entries):
            v = self.vocabs[vocab_index]
            ints[i, PHASE] = SPEAKER if at_speaker else MESSAGE
            ints[i, TURNS] = p.turns
            ints[i, MAX_NEW] = p.max_new_tokens
            ints[i, NL_LEN] = len(v.newline_ids)
            ints[i, FORCE_SPK] = -1 if force_id is None else force_id
            ints[i, EOS_OK] = int(p.eos_stop)
            ints[i, EOS_ID] = -1 if v.eos_id is None else v.eos_id
            ints[i, EOT_ID] = v.eot_id
            ints[i, PROMPT_LEN] = len(prompt)
            ints[i, LIMIT] = limit
            ints[i, KEY] = seed_key(p.seed)
            ints[i, VOCAB] = vocab_index
            ints[i, MIN_NEW] = min(p.min_new_tokens, p.max_new_tokens)
            floats[i, TEMPERATURE] = p.temperature
            floats[i, TOP_P] = p.top_p
            floats[i, PENALTY] = p.repetition_penalty
            floats[i, TOP_K] = p.top_k
            if p.repetition_penalty != 1.0:
                seen[i, torch.tensor(prompt, dtype=torch.long)] = True
            speaker[i] = v.speaker_allowed()
            if forbidden:
                speaker[i, torch.tensor(forbidden, dtype=torch.long)] = False
            message[i] = v.message_allowed()
            if not p.eos_stop and v.eos_id is not None and v.eos_id != v.eot_id:
                message[i, v.eos_id] = False
        return {"ints": ints, "floats": floats, "seen": seen, "speaker_mask": speaker, "message_mask": message}

    def write_rows(self, slots: list[int], rows: dict[str, torch.Tensor]) -> None:
        index = host_to_device(torch.tensor(slots, dtype=torch.long), self.device)
        for name, values in rows.items():
            getattr(self, name).index_copy_(0, index, host_to_device(values, self.device))

    def retire(self, slots: list[int]) -> None:
        """Rows the host ended (stop string, cancelled, failed): their slots decode nothing more."""
        if slots:
            index = host_to_device(torch.tensor(slots, dtype=torch.long), self.device)
            self.ints[index, PHASE] = DONE

    # --- one step ----------------------------------------------------------------------------------
    def sample(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Choose the next token of slots `idx` [b] from their `logits` [b, >=vocab] and advance their
        state; returns the chosen tokens [b] (also in `last`), and writes `out[idx]`."""
        ints = self.ints.index_select(0, idx)
        floats = self.floats.index_select(0, idx)
        column = ints.unbind(1)
        phase = column[PHASE]
        running = phase != DONE
        at_speaker = phase == SPEAKER
        in_message = phase == MESSAGE
        logits = logits[:, : self.vocab].float()

        allowed = torch.where(at_speaker[:, None], self.speaker_mask.index_select(0, idx), self.message_mask.index_select(0, idx))
        penalty = torch.where(in_message, floats[:, PENALTY], torch.ones_like(floats[:, PENALTY]))[:, None]
        seen = self.seen.index_select(0, idx)
        logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
        # Too short to end: neither <EOT> nor EOS while the message is under its minimum.
        # (Two scattered writes per row, not a [rows, vocab] comparison; no EOS id: <EOT> twice.)
        too_short = in_message & (column[TURN_TOKENS] < column[MIN_NEW])
        rows = torch.arange(idx.shape[0], device=idx.device)
        for end in (column[EOT_ID], torch.where(column[EOS_ID] >= 0, column[EOS_ID], column[EOT_ID])):
            allowed[rows, end] = allowed[rows, end] & ~too_short
        logits = logits.masked_fill(~allowed, float("-inf"))
        greedy = logits.argmax(dim=-1)
        temperature = floats[:, TEMPERATURE]
        scaled = logits / temperature.clamp(min=1e-5)[:, None]
        keys = hash32(column[KEY] ^ hash32(column[DRAWS]))
        drawn = self._draw(scaled, keys, floats[:, TOP_P], floats[:, TOP_K].long())
        token = torch.where(temperature > 0, drawn, greedy)

        # Forced tokens: the newline after <EOT>, <EOT> when the turn's budget is spent, the first speaker.
        nl_left, force_eot, force_spk = column[NL_LEFT], column[FORCE_EOT] > 0, column[FORCE_SPK]
        nl_token = self.newlines[column[VOCAB], (column[NL_LEN] - nl_left).clamp(0, MAX_NEWLINE_IDS - 1)]
        first_speaker = at_speaker & (force_spk >= 0) & (column[TURNS_DONE] == 0)
        token = torch.where(first_speaker, force_spk, token)
        token = torch.where(force_eot, column[EOT_ID], token)
        token = torch.where(nl_left > 0, nl_token, token)

        # Bookkeeping (the rows already done keep their state).
        eot = column[EOT_ID]
        ends_on_eos = running & in_message & (token == column[EOS_ID]) & (column[EOS_OK] > 0) & (token != eot)
        append = running & ~ends_on_eos
        speaker_start = append & at_speaker & self.is_speaker[column[VOCAB], token]
        closes = append & in_message & (token == eot)
        in_text = append & in_message & ~closes
        turns_done = column[TURNS_DONE] + closes.long()
        last_turn = closes & (turns_done >= column[TURNS])
        next_turn = closes & ~last_turn
        turn_tokens = torch.where(speaker_start, torch.zeros_like(column[TURN_TOKENS]), column[TURN_TOKENS] + in_text.long())
        budget_spent = in_text & (turn_tokens >= column[MAX_NEW])
        length_pending = (column[LENGTH_PENDING] > 0) | (budget_spent & (turns_done + 1 >= column[TURNS]))
        generated = column[GENERATED] + append.long()
        finish = column[FINISH]
        finish = torch.where(ends_on_eos, torch.full_like(finish, EOS), finish)
        finish = torch.where(last_turn, torch.where(column[LENGTH_PENDING] > 0, torch.full_like(finish, LENGTH), torch.full_like(finish, STOP)), finish)
        at_limit = append & ~last_turn & (column[PROMPT_LEN] + generated >= column[LIMIT] - 1)
        finish = torch.where(at_limit, torch.full_like(finish, LENGTH), finish)
        new_phase = torch.where(speaker_start, torch.full_like(phase, MESSAGE), phase)
        new_phase = torch.where(next_turn, torch.full_like(phase, SPEAKER), new_phase)
        new_phase = torch.where(ends_on_eos | last_turn | at_limit, torch.full_like(phase, DONE), new_phase)
        new_nl = torch.where(running & (nl_left > 0), nl_left - 1, nl_left)
        new_nl = torch.where(next_turn, column[NL_LEN], new_nl)
        new_force_eot = (force_eot & ~running) | budget_spent

        updated = torch.stack([
            new_phase, turns_done, column[TURNS], turn_tokens, column[MAX_NEW], new_nl, column[NL_LEN], new_force_eot.long(),
            force_spk, finish, length_pending.long(), column[EOS_OK], column[EOS_ID], eot, generated, column[PROMPT_LEN],
            column[LIMIT], column[KEY], column[DRAWS] + running.long(), column[VOCAB], column[MIN_NEW],
        ], dim=1)
        appended = torch.where(append, token, torch.full_like(token, -1))
        result = torch.stack([appended, torch.where(running, finish, torch.full_like(finish, -1))], dim=1)
        # Commit: nothing above changed any state, so a failure before this point leaves the rows as they were.
        self.seen[idx, token] = self.seen[idx, token] | append
        self.ints.index_copy_(0, idx, updated)
        self.last.index_copy_(0, idx, token)
        self.out.index_copy_(0, idx, result)
        return token

    def _draw(self, scaled: torch.Tensor, keys: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
        k = self.candidates
        ordered, order = scaled.topk(k, dim=-1)
        probs = (ordered - scaled.logsumexp(dim=-1, keepdim=True)).exp()
        cumulative = probs.cumsum(dim=-1)
        has_k = (top_k > 0) & (top_k <= k)
        use_candidates = has_k | ((top_p < 1.0) & (cumulative[:, -1] >= top_p))
        drop = (cumulative - probs) > top_p[:, None]  # keep the smallest set reaching top_p
        drop |= self._arange_candidates[None, :] >= torch.where(has_k, top_k, torch.full_like(top_k, k))[:, None]
        noisy = ordered.masked_fill(drop, float("-inf")) + gumbel_at(keys, order)
        from_candidates = order.gather(1, noisy.argmax(dim=-1, keepdim=True)).squeeze(1)
        if scaled.device.type == "cpu" and bool(use_candidates.all()):
            return from_candidates  # on the CPU a branch costs nothing: skip the whole-vocabulary draw
        return torch.where(use_candidates, from_candidates, gumbel_argmax(scaled, keys))


def host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on the device without waiting for the device's queue (pinned, asynchronous on CUDA)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
