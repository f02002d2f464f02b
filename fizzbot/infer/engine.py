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

from fizzbot.data.messages import EOT, SPEAKER_TOKEN_RE
from fizzbot.data.speakers import SpeakerMap

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
        self.seen = torch.zeros(engine.vocab, dtype=torch.bool)
        self.seen[torch.tensor(prompt_ids, dtype=torch.long)] = True
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(p.seed if p.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        self.phase = SPEAKER if engine.ends_at_turn_boundary(prompt_ids) else MESSAGE
        self.turns_done = 0
        self.turn_tokens = 0
        self.forced: list[int] = []
        self.finish_reason: str | None = None
        self.text_sent = ""
        self.started = time.perf_counter()
        self.force_speaker_id = engine.token_id(p.force_speaker) if p.force_speaker else None
        self.forbidden = [engine.token_id(t) for t in p.forbid_speakers]


class GenerationEngine:
    def __init__(self, model, tokenizer, speaker_map: SpeakerMap, *, max_prompt_tokens: int = 768, max_batch_size: int = 32, device: torch.device | None = None):
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
        # Tokens never sampled inside a message: speaker tokens (only at a turn start), pad, BOS.
        never = [self.pad_id] + self.bos + [i for i in range(len(tokenizer), self.vocab)]
        self.message_mask = torch.zeros(self.vocab, dtype=torch.bool)
        self.message_mask[self.speaker_ids] = True
        self.message_mask[torch.tensor([i for i in never if i is not None and i < self.vocab], dtype=torch.long)] = True
        self.message_mask[self.eot_id] = False
        self._queue: queue.Queue[Request] = queue.Queue()
        self._rows: list[_Row] = []
        self._cache = None
        self._mask: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None
        self._last_tokens: torch.Tensor | None = None
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.steps = 0

    # --- tokens ------------------------------------------------------------------------------------
    def token_id(self, token: str) -> int:
        if not SPEAKER_TOKEN_RE.fullmatch(token) or token not in self.speaker_map.tokens:
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
        budget = self.max_prompt_tokens - len(self.bos)
        dropped = 0
        if len(ids) > budget:
            starts = [i for i, t in enumerate(ids) if t in self._speaker_set]
            cut = next((s for s in starts if len(ids) - s <= budget), None)
            if cut is None:
                cut = len(ids) - budget  # one message alone is over budget: keep its end
            dropped = sum(1 for s in starts if s < cut)
            ids = ids[cut:]
        return self.bos + ids, dropped

    # --- the batch ----------------------------------------------------------------------------------
    def submit(self, request: Request) -> Request:
        for token in [request.params.force_speaker, *request.params.forbid_speakers]:
            if token is not None:
                self.token_id(token)
        self._queue.put(request)
        self._wakeup.set()
        return request

    def pending(self) -> int:
        return self._queue.qsize() + len(self._rows)

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
            self._thread = threading.Thread(target=self._loop, name="fizzbot-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

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
                self._rows, self._cache = [], None

    @torch.inference_mode()
    def step(self) -> None:
        """Admit waiting requests (prefill), then one decode step for every row in the batch."""
        self._admit()
        if not self._rows:
            return
        self.steps += 1
        mask = torch.cat([self._mask, torch.ones(len(self._rows), 1, dtype=self._mask.dtype, device=self.device)], dim=1)
        out = self.model(
            input_ids=self._last_tokens.view(-1, 1),
            attention_mask=mask,
            position_ids=self._positions.view(-1, 1),
            past_key_values=self._cache,
            use_cache=True,
        )
        self._cache = out.past_key_values
        self._mask = mask
        self._positions = self._positions + 1
        self._advance(out.logits[:, -1, :])

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
        longest = max(len(r.prompt_ids) for r in new)
        input_ids = torch.full((len(new), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(new), longest), dtype=torch.long)
        for i, row in enumerate(new):
            n = len(row.prompt_ids)
            input_ids[i, longest - n:] = torch.tensor(row.prompt_ids)
            mask[i, longest - n:] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=True,
            logits_to_keep=1,
        )
        self._merge(new, out.past_key_values, mask.to(self.device), positions[:, -1].to(self.device) + 1)
        # The first token of each new row comes from its prefill logits.
        logits = out.logits[:, -1, :]
        first = len(self._rows) - len(new)
        self._advance(logits, rows=range(first, len(self._rows)))

    def _merge(self, rows: list[_Row], cache, mask: torch.Tensor, next_positions: torch.Tensor) -> None:
        """Join prefilled rows to the running batch, padding the shorter cache on the left."""
        from transformers import DynamicCache

        if not self._rows:
            self._rows, self._cache, self._mask, self._positions = rows, cache, mask, next_positions
            self._last_tokens = torch.full((len(rows),), self.pad_id, dtype=torch.long, device=self.device)
            return
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)

        def pad(t: torch.Tensor, to: int) -> torch.Tensor:
            if t.shape[-2 if t.dim() == 4 else -1] == to:
                return t
            if t.dim() == 4:  # [B, H, L, D]
                extra = torch.zeros(t.shape[0], t.shape[1], to - t.shape[2], t.shape[3], dtype=t.dtype, device=t.device)
                return torch.cat([extra, t], dim=2)
            extra = torch.zeros(t.shape[0], to - t.shape[1], dtype=t.dtype, device=t.device)
            return torch.cat([extra, t], dim=1)

        layers = []
        for (k_old, v_old, *_), (k_new, v_new, *_) in zip(self._cache, cache):
            layers.append((torch.cat([pad(k_old, width), pad(k_new, width)]), torch.cat([pad(v_old, width), pad(v_new, width)])))
        self._cache = DynamicCache(ddp_cache_data=layers)
        self._mask = torch.cat([pad(self._mask, width), pad(mask, width)])
        self._positions = torch.cat([self._positions, next_positions])
        self._last_tokens = torch.cat([self._last_tokens, torch.full((len(rows),), self.pad_id, dtype=torch.long, device=self.device)])
        self._rows = self._rows + rows

    def _advance(self, logits: torch.Tensor, rows: range | None = None) -> None:
        """Choose each row's next token, record it, and retire finished rows."""
        indices = list(rows) if rows is not None else list(range(len(self._rows)))
        logits = logits.float().cpu()
        chosen = self._last_tokens.clone().cpu()
        for j, i in enumerate(indices):
            row = self._rows[i]
            if row.phase == DONE:
                continue
            token = self._choose(row, logits[j])
            chosen[i] = token
            self._record(row, token)
        self._last_tokens = chosen.to(self.device)
        self._retire()

    def _choose(self, row: _Row, logits: torch.Tensor) -> int:
        if row.forced:
            return row.forced.pop(0)
        p = row.params
        if row.phase == SPEAKER:
            if row.force_speaker_id is not None and row.turns_done == 0:
                return row.force_speaker_id
            allowed = torch.full_like(logits, float("-inf"))
            allowed[self.speaker_ids] = 0.0
            if row.forbidden:
                allowed[torch.tensor(row.forbidden)] = float("-inf")
            if torch.isinf(allowed).all():
                raise EngineError("every speaker is forbidden")
            logits = logits + allowed
        else:
            logits = logits.masked_fill(self.message_mask, float("-inf"))
            if not p.eos_stop and self.eos_id is not None:
                logits[self.eos_id] = float("-inf")
        if p.repetition_penalty != 1.0 and row.phase == MESSAGE:
            seen = row.seen & torch.isfinite(logits)
            scores = logits[seen]
            logits[seen] = torch.where(scores > 0, scores / p.repetition_penalty, scores * p.repetition_penalty)
        if p.temperature <= 0:
            return int(torch.argmax(logits))
        logits = logits / p.temperature
        if p.top_k > 0:
            kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=0)
            cut = cumulative - sorted_probs > p.top_p  # keep the smallest set reaching top_p
            sorted_probs[cut] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=row.generator))

    def _record(self, row: _Row, token: int) -> None:
        p = row.params
        if token == self.eos_id and row.phase == MESSAGE and p.eos_stop and token != self.eot_id:
            row.finish_reason = "eos"
            row.phase = DONE
            return
        row.generated.append(token)
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
        if not keep:
            self._rows, self._cache, self._mask, self._positions, self._last_tokens = [], None, None, None, None
            return
        index = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(index)
        self._rows = [self._rows[i] for i in keep]
        self._mask = self._mask[index]
        self._positions = self._positions[index]
        self._last_tokens = self._last_tokens[index]
        # Columns that are padding for every remaining row are dropped: the batch stays as short as its longest row.
        live = self._mask.any(dim=0).nonzero()
        first = int(live[0]) if len(live) else 0
        if first > 0:
            self._crop_left(first)
            self._mask = self._mask[:, first:]

    def _crop_left(self, n: int) -> None:
        from transformers import DynamicCache

        layers = [(k[:, :, n:], v[:, :, n:]) for k, v, *_ in self._cache]
        self._cache = DynamicCache(ddp_cache_data=layers)

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


def load_for_inference(model_dir: str | Path, *, device: torch.device, tokenizer_model: str | None = None, dtype: torch.dtype | None = None):
    """(model, tokenizer, speaker map) from a checkpoint: full weights, or an adapter merged onto its base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fizzbot.model.tokenizer import check_chat_tokens
    from fizzbot.train import checkpoint as ckpt

    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"model directory {folder} does not exist")
    map_path = folder / ckpt.SPEAKER_MAP
    if not map_path.is_file():
        raise FileNotFoundError(f"{folder}: no speaker_map.json (is this a fizzbot checkpoint?)")
    speaker_map = SpeakerMap.load(map_path)
    tokenizer_source = tokenizer_model or (folder if (folder / "tokenizer_config.json").is_file() else None)
    if tokenizer_source is None:
        raise FileNotFoundError(
            f"{folder} holds no tokenizer: pass --tokenizer-model PATH (or generate.tokenizer_model) "
            "pointing at the run's tokenizer/ folder"
        )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    check_chat_tokens(tokenizer, speaker_map.tokens)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if (folder / "adapter_config.json").is_file():
        import json

        from peft import PeftModel

        adapter = json.loads((folder / "adapter_config.json").read_text())
        base = folder / ckpt.BASE_DIR if (folder / ckpt.BASE_DIR).is_dir() else adapter.get("base_model_name_or_path")
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        # Merged into the (unquantised) base weights: one matrix per layer, no adapter cost per token.
        model = PeftModel.from_pretrained(model, folder).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    model.to(device).eval()
    return model, tokenizer, speaker_map


def engine_from_checkpoint(model_dir: str | Path, *, device: str = "auto", tokenizer_model: str | None = None, max_prompt_tokens: int = 768, max_batch_size: int = 32) -> GenerationEngine:
    dev = resolve_device(device)
    model, tokenizer, speaker_map = load_for_inference(model_dir, device=dev, tokenizer_model=tokenizer_model)
    return GenerationEngine(model, tokenizer, speaker_map, max_prompt_tokens=max_prompt_tokens, max_batch_size=max_batch_size, device=dev)
