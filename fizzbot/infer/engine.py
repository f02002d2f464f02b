"""The generation engine shared by `fizzbot generate` and the Serve deployment.

Continuous batching: requests join the running batch between decode steps (their prompts prefilled
together) and leave it when done, so concurrent requests share every forward pass. Each request has
its own sampling settings and seeded generator, so its output does not depend on what it was
batched with (up to float rounding). A conversation is a grammar the engine enforces:

    prompt "\n" -> <Sk> (a speaker token: sampled among allowed speakers, or forced)
                -> message tokens (no speaker tokens) -> <EOT> -> "\n" -> next turn ...

`turns` counts <EOT>s; between turns the model picks who speaks next. Over-long prompts lose their
oldest messages, whole.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from fizzbot.chat.render import trim_ids
from fizzbot.chat.tokens import EOT, SPEAKER_TOKEN_RE
from fizzbot.chat.speakers import SpeakerMap

SPEAKER, MESSAGE, DONE = 0, 1, 2


@dataclass
class SamplingParams:
    max_new_tokens: int = 64  # per turn
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


@dataclass
class Result:
    text: str  # what was generated, speaker tokens included
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (turns done or a stop string), "length", "eos"
    dropped_messages: int = 0  # oldest prompt messages trimmed to fit
    seconds: float = 0.0


@dataclass
class Request:
    prompt: str
    params: SamplingParams
    on_text: Callable[[str], None] | None = None  # streaming: text deltas, from the engine thread
    on_done: Callable[[Result | BaseException], None] | None = None
    # filled by the engine
    result: Result | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False


class EngineError(ValueError):
    pass


class _Row:
    """Decoding state of one request inside the batch."""

    def __init__(self, request: Request, prompt_ids: list[int], dropped: int, engine: "GenerationEngine"):
        self.request = request
        p = request.params
        self.params = p
        self.prompt_ids = prompt_ids
        self.dropped = dropped
        self.generated: list[int] = []
        self.seen = None  # tokens seen so far, for the repetition penalty (only kept when it applies)
        if p.repetition_penalty != 1.0:
            self.seen = torch.zeros(engine.vocab, dtype=torch.bool, device=engine.device)
            self.seen[torch.tensor(prompt_ids, dtype=torch.long, device=engine.device)] = True
        seed = p.seed if p.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self.key = _mix32(seed & 0xFFFFFFFF) ^ _mix32((seed >> 32) ^ 0x5BD1E995)
        self.draws = 0  # random draws so far: with the seed, what the next draw's noise depends on
        self.phase = SPEAKER if engine.ends_at_turn_boundary(prompt_ids) else MESSAGE
        self.turns_done = 0
        self.turn_tokens = 0
        self.forced: list[int] = []
        self.finish_reason: str | None = None
        self.text_sent = ""
        self.started = time.perf_counter()
        self.force_speaker_id = engine.token_id(p.force_speaker) if p.force_speaker else None
        self.forbidden = [engine.token_id(t) for t in p.forbid_speakers]


def _mix32(x: int) -> int:
    """lowbias32: a 32-bit integer hash (the same as _hash32, in Python)."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding 32-bit values (products wrap; the low 32 bits are exact)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def gumbel_noise(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """Gumbel noise [B, vocab] that depends only on each row's key: the same request draws the same
    sample whatever it is batched with, on any device, with no per-row generator to launch."""
    index = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    bits = _hash32((index[None, :] * 0x9E3779B1 + keys[:, None]) & 0xFFFFFFFF)
    uniform = (bits.to(torch.float64) + 0.5) / 4294967296.0
    return (-torch.log(-torch.log(uniform))).to(torch.float32)


# --- KV-cache backends ----------------------------------------------------------------------------------


def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A DynamicLayer that appends into spare capacity instead of concatenating.

        transformers' DynamicLayer `torch.cat`s the whole cache to append one token; with a batch of
        rows that copy is a quarter of a CPU decode step. Here the cache lives in a buffer with room
        to grow, `keys`/`values` are views of its live span, and dropping leading columns is a view.
        """

        def load(self, keys: torch.Tensor, values: torch.Tensor) -> None:
            spare = max(64, keys.shape[-2])  # double on every reallocation: amortised O(1) appends
            shape = list(keys.shape)
            shape[-2] += spare
            self._k, self._v = keys.new_empty(shape), values.new_empty(shape[:-1] + [values.shape[-1]])
            n = keys.shape[-2]
            self._k[:, :, :n], self._v[:, :, :n] = keys, values
            self.start, self.end = 0, n
            self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
            self._view()

        def _view(self) -> None:
            self.keys = self._k[:, :, self.start:self.end]
            self.values = self._v[:, :, self.start:self.end]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.load(key_states, value_states)
                return self.keys, self.values
            n = key_states.shape[-2]
            if self.end + n > self._k.shape[-2]:
                self.load(self.keys, self.values)
            self._k[:, :, self.end:self.end + n] = key_states
            self._v[:, :, self.end:self.end + n] = value_states
            self.end += n
            self._view()
            return self.keys, self.values

        def drop_left(self, n: int) -> None:
            self.start += n
            self._view()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self.load(self.keys[indices], self.values[indices])

    return GrowingLayer


def _growing_cache(layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
    """A DynamicCache whose layers append in place (optionally filled with `layers`' tensors)."""
    from transformers import DynamicCache

    layer_class = _growing_layer_class()
    cache = DynamicCache()
    cache.layer_class_to_replicate = layer_class
    cache.layers = []
    for keys, values in layers or []:
        layer = layer_class()
        layer.load(keys, values)
        cache.layers.append(layer)
    return cache


class DynamicBackend:
    """Per-row KV caches as long as the longest live row: rows join by left-padding, leave by index."""

    def __init__(self, engine: "GenerationEngine"):
        self.engine = engine
        self.cache = None
        self.mask: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    def add(self, prompts: list[list[int]]) -> torch.Tensor:
        e = self.engine
        ids, mask, positions = e.left_pad(prompts)
        out = e.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=_growing_cache(),
                      use_cache=True, logits_to_keep=1)
        self._merge(out.past_key_values, mask, positions[:, -1] + 1)
        return out.logits[:, -1, :]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        # One query token per row: its 4D mask is the 2D one, broadcast. Given in that form,
        # transformers uses it as is instead of building it anew (a noticeable share of a CPU step).
        out = self.engine.model(
            input_ids=tokens.view(-1, 1), attention_mask=mask[:, None, None, :].bool(), position_ids=self.positions.view(-1, 1),
            past_key_values=self.cache, use_cache=True,
        )
        self.cache, self.mask, self.positions = out.past_key_values, mask, self.positions + 1
        return out.logits[:, -1, :]

    def keep(self, keep: list[int]) -> None:
        if not keep:
            self.cache = self.mask = self.positions = None
            return
        index = torch.tensor(keep, device=self.engine.device)
        self.cache.batch_select_indices(index)
        self.mask, self.positions = self.mask[index], self.positions[index]
        # Columns that are padding for every remaining row go: the batch stays as long as its longest row.
        live = self.mask.any(dim=0).nonzero()
        first = int(live[0]) if len(live) else 0
        if first > 0:
            for layer in self.cache.layers:
                layer.drop_left(first)
            self.mask = self.mask[:, first:]

    def _merge(self, cache, mask: torch.Tensor, next_positions: torch.Tensor) -> None:
        if self.cache is None:
            self.cache, self.mask, self.positions = cache, mask, next_positions
            return
        width = max(self.mask.shape[1], mask.shape[1])
        layers = []
        for old, new in zip(self.cache.layers, cache.layers):
            layers.append((torch.cat([_left_pad(old.keys, width, 2), _left_pad(new.keys, width, 2)]),
                           torch.cat([_left_pad(old.values, width, 2), _left_pad(new.values, width, 2)])))
        self.cache = _growing_cache(layers)
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)])
        self.positions = torch.cat([self.positions, next_positions])


def _left_pad(t: torch.Tensor, to: int, dim: int) -> torch.Tensor:
    if t.shape[dim] == to:
        return t
    shape = list(t.shape)
    shape[dim] = to - t.shape[dim]
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class StaticBackend:
    """A fixed [slots x length] KV cache whose decode step can be captured as a CUDA graph.

    Every step writes at one shared index `t`; a row that joins is prefilled on its own and its
    keys and values copied into its slot to end at `t`, its mask opening only its own span (RoPE
    positions are per row, so a row's place in the cache does not matter). When `t` reaches the end,
    the live spans are shifted back (`_compact`). Inactive slots ride along masked out: the graph's
    shapes never change, so `torch.compile(mode="reduce-overhead")` replays one graph per step.
    """

    def __init__(self, engine: "GenerationEngine", slots: int, length: int, compile: bool, fullgraph: bool = False):
        from transformers import StaticCache

        e = self.engine = engine
        self.slots, self.length = slots, length
        self.cache = StaticCache(config=e.model.config, max_cache_len=length)
        self.start = e.max_prompt_tokens  # first write index: room for any prompt before it
        self.t = self.start
        self.mask = torch.zeros(slots, length, dtype=torch.long, device=e.device)
        self.positions = torch.zeros(slots, dtype=torch.long, device=e.device)
        self.row_slots: list[int] = []  # slot of each active row, in the engine's row order
        self.free = list(range(slots))
        from fizzbot.infer.attention import use_decode_attention

        use_decode_attention(e.model)
        self.forward = e.model.forward
        if compile:
            self.forward = torch.compile(e.model.forward, mode="reduce-overhead", fullgraph=fullgraph, dynamic=False)
        self._warm = False
        self.compactions = 0

    def __len__(self) -> int:
        return len(self.row_slots)

    def _layers(self):
        return self.cache.layers

    def add(self, prompts: list[list[int]]) -> torch.Tensor:
        e = self.engine
        if not self._warm:
            self._initialise()
        if self.t + 1 >= self.length:
            self._compact()
        ids, mask, positions = e.left_pad(prompts)
        out = e.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        width = mask.shape[1]
        lo = self.t - width
        for i in range(len(prompts)):
            slot = self.free.pop(0)
            for layer, (k, v, *_) in zip(self._layers(), out.past_key_values):
                layer.keys[slot, :, lo:self.t] = k[i]
                layer.values[slot, :, lo:self.t] = v[i]
            self.mask[slot].zero_()
            self.mask[slot, lo:self.t] = mask[i]
            self.positions[slot] = positions[i, -1] + 1
            self.row_slots.append(slot)
        return out.logits[:, -1, :]

    def _initialise(self) -> None:
        """Allocate the cache (one throw-away step) before any prefill is copied into it."""
        e = self.engine
        dummy = torch.full((self.slots, 1), e.pad_id, dtype=torch.long, device=e.device)
        self._set_index(0)
        e.model(input_ids=dummy, attention_mask=self.mask.clone(), position_ids=self.positions.view(-1, 1),
                past_key_values=self.cache, cache_position=torch.tensor([0], device=e.device), use_cache=True)
        self._warm = True

    def _set_index(self, t: int) -> None:
        for layer in self._layers():
            layer.cumulative_length.fill_(t)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        e = self.engine
        if self.t + 1 >= self.length:
            self._compact()
        slots = torch.tensor(self.row_slots, device=e.device)
        full = torch.full((self.slots,), e.pad_id, dtype=torch.long, device=e.device)
        full[slots] = tokens
        self.mask[slots, self.t] = 1
        self._set_index(self.t)
        out = self.forward(
            input_ids=full.view(-1, 1), attention_mask=self.mask, position_ids=self.positions.view(-1, 1),
            past_key_values=self.cache, cache_position=torch.tensor([self.t], device=e.device), use_cache=True,
        )
        logits = out.logits[:, -1, :][slots]
        self.positions[slots] += 1
        self.t += 1
        return logits

    def keep(self, keep: list[int]) -> None:
        kept = [self.row_slots[i] for i in keep]
        for slot in self.row_slots:
            if slot not in kept:
                self.mask[slot].zero_()
                self.free.append(slot)
        self.row_slots = kept
        if not kept:
            self.t = self.start

    def _compact(self) -> None:
        """Shift every live span back so that the write index returns to the prompt boundary."""
        live = self.mask.any(dim=0).nonzero()
        first = int(live[0]) if len(live) else self.t
        shift = min(first, self.t - self.start)
        if shift <= 0:
            raise EngineError("a conversation grew past the static cache; raise generate.max_cache_len")
        n = self.t - shift
        for layer in self._layers():
            layer.keys[:, :, :n] = layer.keys[:, :, shift:self.t].clone()
            layer.values[:, :, :n] = layer.values[:, :, shift:self.t].clone()
        self.mask[:, :n] = self.mask[:, shift:self.t].clone()
        self.mask[:, n:] = 0
        self.t = n
        self.compactions += 1


class GenerationEngine:
    def __init__(self, model, tokenizer, speaker_map: SpeakerMap, *, max_prompt_tokens: int = 768, max_batch_size: int = 32,
                 device: torch.device | None = None, static_cache: bool = False, compile: bool = False, max_cache_len: int = 2048):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.speaker_map = speaker_map
        self.device = device or next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.vocab = model.get_input_embeddings().weight.shape[0]
        self.speaker_ids = torch.tensor(tokenizer.convert_tokens_to_ids(speaker_map.tokens), dtype=torch.long)
        self._speaker_set = set(self.speaker_ids.tolist())
        self.eot_id = tokenizer.convert_tokens_to_ids(EOT)
        self.eos_id = tokenizer.eos_token_id
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos_id or 0)
        self.newline_ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
        max_positions = getattr(model.config, "max_position_embeddings", 4096) or 4096
        self.max_positions = max_positions
        self.max_prompt_tokens = min(max_prompt_tokens, max_positions - 16)
        # What may be sampled where: speaker tokens only at a turn start; inside a message anything
        # but speaker tokens, pad, BOS and the embedding's spare rows.
        # Retired tokens (people who opted out after an earlier map) are never spoken as.
        speakable = torch.tensor(tokenizer.convert_tokens_to_ids(speaker_map.speakable_tokens), dtype=torch.long)
        self.speaker_allowed = torch.zeros(self.vocab, dtype=torch.bool, device=self.device)
        self.speaker_allowed[speakable.to(self.device)] = True
        self.n_speakable = len(speakable)
        never = [self.pad_id] + self.bos + [i for i in range(len(tokenizer), self.vocab)]
        self.message_allowed = torch.ones(self.vocab, dtype=torch.bool, device=self.device)
        self.message_allowed[self.speaker_ids.to(self.device)] = False
        self.message_allowed[torch.tensor([i for i in never if i is not None and i < self.vocab], dtype=torch.long, device=self.device)] = False
        self.message_allowed[self.eot_id] = True
        self._nothing_seen = torch.zeros(self.vocab, dtype=torch.bool, device=self.device)
        if static_cache:
            length = max(max_cache_len, self.max_prompt_tokens * 2 + 64)
            self.backend = StaticBackend(self, max_batch_size, length, compile)
        else:
            self.backend = DynamicBackend(self)
        self._queue: queue.Queue[Request] = queue.Queue()
        self._rows: list[_Row] = []
        self._last: list[int] = []  # each row's latest token, the input of the next decode step
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.steps = 0
        self.timings: dict[str, float] | None = None  # set to {} to profile steps

    # --- tokens ------------------------------------------------------------------------------------
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

    def encode(self, prompt: str) -> tuple[list[int], int]:
        """Prompt ids (BOS first), trimmed from the left by whole messages; and how many were dropped."""
        text = prompt
        if text.rstrip(" ").endswith(EOT):
            text = text.rstrip(" ") + "\n"  # a finished message: the next token is a speaker
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        # The same rule as the training rows (fizzbot.chat.render.trim_ids).
        ids, dropped = trim_ids(ids, self.max_prompt_tokens - len(self.bos), self._speaker_set)
        return self.bos + ids, dropped

    def left_pad(self, prompts: list[list[int]]):
        """Left-padded ids, mask and per-row positions on the device (rows end together)."""
        longest = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), longest), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, longest - len(p):] = torch.tensor(p)
            mask[i, longest - len(p):] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    # --- the batch ----------------------------------------------------------------------------------
    def submit(self, request: Request) -> Request:
        for token in [request.params.force_speaker, *request.params.forbid_speakers]:
            if token is not None:
                self.token_id(token)
        self._queue.put(request)
        self._wakeup.set()
        return request


    def generate(self, requests: list[Request]) -> list[Result]:
        """Run requests to completion (in this thread unless the background loop is running)."""
        for r in requests:
            self.submit(r)
        if self._thread is not None:
            for r in requests:
                r.done.wait()
        else:
            while not all(r.done.is_set() for r in requests):
                self.step()
        for r in requests:
            if r.error is not None:
                raise r.error
        return [r.result for r in requests]

    def start(self) -> None:
        """Run the decode loop in a background thread (the server's mode)."""
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="fizzbot-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None

    def _loop(self) -> None:
        while not self._stop:
            if not self._rows and self._queue.empty():
                self._wakeup.wait(timeout=0.5)
                self._wakeup.clear()
                continue
            try:
                self.step()
            except BaseException as exc:  # fail the requests in flight, keep serving
                for row in self._rows:
                    self._finish(row, error=exc)
                self._rows = []
                self.backend.keep([])

    @torch.inference_mode()
    def step(self) -> None:
        """Admit waiting requests (prefill), then one decode step for every row in the batch."""
        self._admit()
        if not self._rows:
            return
        self.steps += 1
        if self.timings is None:
            logits = self.backend.step(torch.tensor(self._last, dtype=torch.long, device=self.device))
            self._advance(logits, range(len(self._rows)))
            return
        # Profiling (benchmarks): where a step's time goes, with the device synchronised around each part.
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        logits = self.backend.step(torch.tensor(self._last, dtype=torch.long, device=self.device))
        sync()
        t1 = time.perf_counter()
        self._advance(logits, range(len(self._rows)))
        t2 = time.perf_counter()
        self.timings["forward"] = self.timings.get("forward", 0.0) + t1 - t0
        self.timings["sample_and_record"] = self.timings.get("sample_and_record", 0.0) + t2 - t1

    def _admit(self) -> None:
        room = self.max_batch_size - len(self._rows)
        new: list[_Row] = []
        while room > 0:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                break
            if request.cancelled:
                continue
            try:
                ids, dropped = self.encode(request.prompt)
                new.append(_Row(request, ids, dropped, self))
                room -= 1
            except BaseException as exc:
                request.error = exc
                request.done.set()
                if request.on_done:
                    request.on_done(exc)
        if not new:
            return
        logits = self.backend.add([r.prompt_ids for r in new])
        first = len(self._rows)
        self._rows = self._rows + new
        self._last = self._last + [self.pad_id] * len(new)
        # The first token of each new row comes from its prefill logits.
        self._advance(logits, range(first, len(self._rows)))

    def _advance(self, logits: torch.Tensor, rows: range) -> None:
        """Choose the next token of `rows` (one per logits row), record it, and retire finished rows."""
        chosen = self.sample([self._rows[i] for i in rows], logits)
        for i, token in zip(rows, chosen):
            row = self._rows[i]
            if row.phase == DONE:
                continue
            self._last[i] = token
            self._record(row, token)
        self._retire()

    def sample(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """Next tokens for a batch of rows, in a handful of vectorised ops on the model's device.

        The conversation grammar is a mask (speaker tokens at a turn start, none inside a message);
        then repetition penalty, temperature, top-k and top-p per row; then a Gumbel-max draw whose
        noise comes from each row's seed and draw count only. Forced tokens replace the draw.
        """
        device = logits.device
        logits = logits.float()
        at_speaker = torch.tensor([r.phase == SPEAKER for r in rows], device=device)
        allowed = torch.where(at_speaker[:, None], self.speaker_allowed[None, :], self.message_allowed[None, :])
        for i, r in enumerate(rows):
            if r.forbidden and r.phase == SPEAKER:
                allowed[i, r.forbidden] = False
            if not r.params.eos_stop and self.eos_id is not None and r.phase == MESSAGE:
                allowed[i, self.eos_id] = False
        if any(r.phase == SPEAKER and len(set(r.forbidden)) >= self.n_speakable for r in rows):
            raise EngineError("every speaker is forbidden")
        penalties = [r.params.repetition_penalty if r.phase == MESSAGE else 1.0 for r in rows]
        penalty = torch.tensor(penalties, device=device)
        if any(p != 1.0 for p in penalties):
            seen = torch.stack([r.seen if r.seen is not None else self._nothing_seen for r in rows])
            p = penalty[:, None]
            logits = torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)
        logits = logits.masked_fill(~allowed, float("-inf"))
        temperature = torch.tensor([r.params.temperature for r in rows], device=device)
        greedy = logits.argmax(dim=-1)
        scaled = logits / temperature.clamp(min=1e-5)[:, None]
        top_p = torch.tensor([r.params.top_p for r in rows], device=device)
        top_k = torch.tensor([r.params.top_k if r.params.top_k > 0 else self.vocab for r in rows], device=device)
        if any(r.params.top_p < 1.0 or r.params.top_k > 0 for r in rows):
            scaled = self._nucleus(scaled, top_p, top_k, rows)
        keys = torch.tensor([_mix32(r.key ^ _mix32(r.draws)) for r in rows], dtype=torch.int64, device=device)
        drawn = (scaled + gumbel_noise(keys, self.vocab)).argmax(dim=-1)
        choice = torch.where(temperature > 0, drawn, greedy).tolist()
        for i, r in enumerate(rows):
            r.draws += 1
            if r.forced:
                choice[i] = r.forced.pop(0)
            elif r.phase == SPEAKER and r.force_speaker_id is not None and r.turns_done == 0:
                choice[i] = r.force_speaker_id
        return choice

    NUCLEUS_CANDIDATES = 256

    def _nucleus(self, scaled: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        """Top-k and top-p filtering: everything outside the smallest set reaching top_p goes to -inf.

        The candidates are the top 256 tokens (a partial sort) when they hold every row's nucleus,
        which a trained model's distribution nearly always does; otherwise the full vocabulary is
        sorted. Both give the same set.
        """
        k = min(self.NUCLEUS_CANDIDATES, self.vocab)
        ordered, order = scaled.topk(k, dim=-1)
        probs = (ordered - scaled.logsumexp(dim=-1, keepdim=True)).exp()
        cumulative = probs.cumsum(dim=-1)
        in_candidates = all(0 < r.params.top_k <= k for r in rows if r.params.top_p >= 1.0)
        if not in_candidates or not bool(((cumulative[:, -1] >= top_p) | (top_k <= k)).all()):
            ordered, order = scaled.sort(dim=-1, descending=True)
            probs = ordered.softmax(dim=-1)
            cumulative = probs.cumsum(dim=-1)
        drop = (cumulative - probs) > top_p[:, None]  # keep the smallest set reaching top_p
        drop |= torch.arange(ordered.shape[1], device=scaled.device)[None, :] >= top_k[:, None]
        filtered = torch.full_like(scaled, float("-inf"))
        return filtered.scatter_(1, order, ordered.masked_fill(drop, float("-inf")))

    def _record(self, row: _Row, token: int) -> None:
        p = row.params
        if token == self.eos_id and row.phase == MESSAGE and p.eos_stop and token != self.eot_id:
            row.finish_reason = "eos"
            row.phase = DONE
            return
        row.generated.append(token)
        if row.seen is not None:
            row.seen[token] = True
        if row.phase == SPEAKER and token in self._speaker_set:
            row.phase = MESSAGE
            row.turn_tokens = 0
        elif token == self.eot_id and row.phase == MESSAGE:
            row.turns_done += 1
            if row.turns_done >= p.turns:
                row.finish_reason = row.finish_reason or "stop"
                row.phase = DONE
            else:
                row.forced = list(self.newline_ids)
                row.phase = SPEAKER
        elif row.phase == MESSAGE:
            row.turn_tokens += 1
            if row.turn_tokens >= p.max_new_tokens:
                # The turn's budget is spent: close the message so the transcript stays well formed.
                row.forced = [self.eot_id]
                if row.turns_done + 1 >= p.turns:
                    row.finish_reason = "length"
        self._stream(row)
        if p.stop and row.phase != DONE:
            text = self.tokenizer.decode(row.generated, skip_special_tokens=False)
            for stop in p.stop:
                if stop and stop in text:
                    row.finish_reason = "stop"
                    row.phase = DONE
                    break
        if len(row.prompt_ids) + len(row.generated) >= self.max_positions - 1 and row.phase != DONE:
            row.finish_reason = "length"
            row.phase = DONE

    def _stream(self, row: _Row) -> None:
        if row.request.on_text is None:
            return
        text = self.tokenizer.decode(row.generated, skip_special_tokens=False)
        if text.endswith("\ufffd"):
            return  # half of a multi-byte character: wait for the rest
        if len(text) > len(row.text_sent) and text.startswith(row.text_sent):
            row.request.on_text(text[len(row.text_sent):])
            row.text_sent = text

    def _retire(self) -> None:
        keep = [i for i, row in enumerate(self._rows) if row.phase != DONE and not row.request.cancelled]
        if len(keep) == len(self._rows):
            return
        for i, row in enumerate(self._rows):
            if i not in keep:
                self._finish(row)
        self.backend.keep(keep)
        self._rows = [self._rows[i] for i in keep]
        self._last = [self._last[i] for i in keep]

    def _finish(self, row: _Row, error: BaseException | None = None) -> None:
        request = row.request
        if error is not None:
            request.error = error
        else:
            text = self.tokenizer.decode(row.generated, skip_special_tokens=False)
            for stop in row.params.stop:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            request.result = Result(
                text=text,
                prompt_tokens=len(row.prompt_ids),
                completion_tokens=len(row.generated),
                finish_reason=row.finish_reason or "stop",
                dropped_messages=row.dropped,
                seconds=time.perf_counter() - row.started,
            )
        request.done.set()
        if request.on_done:
            request.on_done(request.error or request.result)


# --- loading a checkpoint ------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def engine_from_checkpoint(model_dir: str | Path, *, device: str = "auto", tokenizer_model: str | None = None, max_prompt_tokens: int = 768,
                           max_batch_size: int = 32, static_cache: bool = False, compile: bool = False, max_cache_len: int = 2048) -> GenerationEngine:
    dev = resolve_device(device)
    from fizzbot.artifacts.loading import load_for_inference

    model, tokenizer, speaker_map = load_for_inference(model_dir, device=dev, tokenizer_model=tokenizer_model)
    return GenerationEngine(model, tokenizer, speaker_map, max_prompt_tokens=max_prompt_tokens, max_batch_size=max_batch_size,
                            device=dev, static_cache=static_cache, compile=compile and dev.type == "cuda", max_cache_len=max_cache_len)
