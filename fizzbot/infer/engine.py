"""The generation engine shared by `fizzbot generate`, the Serve deployment and evaluation.

Continuous batching: requests join the running batch between decode steps and leave it when done, so
concurrent requests share every forward pass. Each iteration of the loop (`step`):

1. admission: waiting requests (tokenised and checked beforehand, in the caller's thread, by
   `prepare`) get a slot, their prompt's cached prefix blocks, and a reservation of the KV blocks
   their worst case needs; what cannot fit was refused in `prepare` and never joins a batch;
2. prefill: up to `prefill_chunk_tokens` prompt tokens of joining rows, packed in one forward
   (a long prompt takes several iterations instead of stalling the running rows); rows whose prompt
   is complete draw their first token;
3. decode: one step for every running row (forward, sampling, grammar and bookkeeping on the device:
   sampling.py; on CUDA a replayed graph);
4. the host reads the step's [rows, 2] output once, and turns tokens into text (text.py): stop
   strings, streaming, results. On CUDA this happens for step N while the GPU runs step N+1.

Failures stay with their rows: a prefill that raises fails the rows prefilled with it; a decode step
that raises is retried row by row and fails only the rows that fail alone; a row whose text handling
raises fails alone. A request's output depends only on its prompt, settings and seed, not on what it
was batched with (sampling.py: counter-based noise).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from fizzbot.chat.speakers import SpeakerMap
from fizzbot.infer.faults import Faults
from fizzbot.infer.kv_cache import BlockPool, PagedKV, block_keys
from fizzbot.infer.runner import Chunk, DynamicRunner, PagedRunner
from fizzbot.infer.sampling import FINISH_REASONS, SamplingParams, SlotState, host_to_device
from fizzbot.infer.text import find_stop, held_back
from fizzbot.infer.vocab import ChatVocab, EngineError, PromptTooLong

__all__ = ["GenerationEngine", "Request", "Result", "SamplingParams", "EngineError", "EngineClosed", "PromptTooLong", "engine_from_checkpoint"]
logger = logging.getLogger("fizzbot.engine")
PREFILL, RUNNING = "prefill", "running"


class EngineClosed(RuntimeError):
    """The engine is shutting down and takes no new request (the server answers 503)."""


@dataclass
class Result:
    text: str  # what was generated, speaker tokens included
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (turns done or a stop string), "length", "eos"
    dropped_messages: int = 0  # oldest prompt messages trimmed to fit
    seconds: float = 0.0
    first_token_s: float | None = None  # from admission to the first token
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache


@dataclass
class _Prepared:
    vocab: int
    prompt_ids: list[int]
    dropped: int
    force_id: int | None
    forbidden: list[int]
    at_speaker: bool
    limit: int
    worst_blocks: int


@dataclass
class Request:
    prompt: str
    params: SamplingParams = field(default_factory=SamplingParams)
    on_text: Callable[[str], None] | None = None  # streaming: text deltas, from the engine thread
    on_done: Callable[[Result | BaseException], None] | None = None
    adapter: str | None = None  # which adapter (served on a shared base) answers; None: the default
    strict_prompt: bool = False  # a prompt over max_prompt_tokens is refused, not trimmed (raw completions)
    # filled by the engine
    result: Result | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    prepared: _Prepared | None = None
    submitted_at: float = field(default_factory=time.perf_counter)


class _Row:
    """One request inside the batch (host side; its decoding state is in SlotState)."""

    def __init__(self, request: Request, slot: int, vocab: ChatVocab):
        self.request = request
        self.prep = request.prepared
        self.slot = slot
        self.blocks: list[int] = []
        self.keys: list[int] = []  # prefix-index keys of the registered blocks
        self.reserved = 0
        self.cached = 0
        self.prefilled = 0
        self.fed = len(self.prep.prompt_ids)  # position of the next token fed to a decode step
        self.stage = PREFILL
        self.stream = vocab.detokenizer.stream()
        self.generated: list[int] = []
        self.searched = 0  # characters already searched for stop strings
        self.cut: int | None = None
        self.sent = 0  # characters streamed
        self.closed = False
        self.started = time.perf_counter()
        self.first_token_at: float | None = None


class GenerationEngine:
    def __init__(self, model, tokenizer, speaker_map: SpeakerMap, *, max_prompt_tokens: int = 768, max_batch_size: int = 32,
                 device: torch.device | None = None, backend: str = "paged", graphs: bool = False, max_cache_len: int = 2048,
                 kv_cache_tokens: int | None = None, block_size: int = 16, prefill_chunk_tokens: int | None = None,
                 lora=None, max_adapters: int = 1):
        self.model = model.eval()
        self.device = device or next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.vocab = model.get_input_embeddings().weight.shape[0]
        if lora is not None:
            self.vocab = lora.vocab
        self.max_positions = getattr(model.config, "max_position_embeddings", 4096) or 4096
        self.max_prompt_tokens = min(max_prompt_tokens, self.max_positions - 16)
        # A row finishes with "length" at this many tokens (prompt + generated).
        self.row_limit = min(self.max_positions, max(max_cache_len, self.max_prompt_tokens + 64))
        self.chat = ChatVocab(tokenizer, speaker_map, self.vocab, self.max_prompt_tokens)
        self.vocabs: list[ChatVocab] = [self.chat]
        self.adapter_index: dict[str | None, int] = {None: 0}
        self.state = SlotState(max_batch_size, self.vocab, self.device, [self.chat], max_vocabs=max(1, max_adapters))
        self.lora = lora
        self.block_size = block_size
        if backend == "paged":
            cfg = model.config
            kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            row_blocks = math.ceil((self.row_limit + 2) / block_size)  # +2: the step that ends a row may run once more
            blocks = (math.ceil(kv_cache_tokens / block_size) if kv_cache_tokens else max_batch_size * row_blocks) + 1
            dtype = next(model.parameters()).dtype
            self.kv = PagedKV(cfg.num_hidden_layers, blocks, block_size, kv_heads, head_dim, max_batch_size + 1, row_blocks, dtype, self.device)
            self.pool: BlockPool | None = BlockPool(blocks, block_size)
            self.runner = PagedRunner(model, self.state, self.kv, self.device, graphs=graphs and self.device.type == "cuda", lora=lora)
            with torch.inference_mode():
                self.runner.capture_all()  # every batch-size bucket now, not in the first requests' time
        elif backend == "dynamic":
            self.kv, self.pool = None, None
            self.runner = DynamicRunner(model, self.state, self.device, self.chat.pad_id)
        else:
            raise ValueError(f"unknown KV-cache backend {backend!r} (paged or dynamic)")
        self.prefill_chunk = prefill_chunk_tokens or (2048 if self.device.type == "cuda" else 512)
        # Prefill and decode in one forward, where the decode step is not a replayed graph.
        self._mixed_steps = self.pool is not None and not getattr(self.runner, "buckets", None)
        self.faults = Faults.from_env()
        self.observer = None  # an object with on_step(rows) and on_finish(request); the server's metrics
        self._waiting: collections.deque[Request] = collections.deque()
        self._lock = threading.Lock()
        self._rows: list[_Row] = []
        self._free_slots = list(range(max_batch_size - 1, -1, -1))
        self._to_retire: list[int] = []
        self._overlap = self.device.type == "cuda"
        self._pinned = [torch.empty_like(self.state.out, device="cpu").pin_memory() for _ in range(2)] if self._overlap else []
        self._flip = 0
        self._pending = None
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._accepting = True
        self.steps = 0
        self.tokens_generated = 0

    # --- the default vocabulary (the CLI, the server's single model) ---------------------------------
    @property
    def tokenizer(self):
        return self.chat.tokenizer

    @property
    def speaker_map(self) -> SpeakerMap:
        return self.chat.speaker_map

    def vocab_for(self, adapter: str | None) -> ChatVocab:
        if adapter not in self.adapter_index:
            known = ", ".join(sorted(a for a in self.adapter_index if a is not None)) or "none"
            raise EngineError(f"unknown model {adapter!r} (adapters served here: {known})")
        return self.vocabs[self.adapter_index[adapter]]

    def encode(self, prompt: str, adapter: str | None = None) -> tuple[list[int], int]:
        return self.vocab_for(adapter).encode(prompt)

    @property
    def adapters(self) -> list[str]:
        return [name for name in self.adapter_index if name is not None]

    def add_adapter(self, name: str, folder: str | Path, tokenizer_model: str | None = None) -> int:
        """Serve another LoRA adapter of this engine's base, from now on, beside the running rows."""
        from fizzbot.artifacts.loading import load_chat_tokens
        from fizzbot.infer.lora import read_adapter

        if self.lora is None:
            raise EngineError("this engine serves one merged model; adapters need serve.adapters")
        if name in self.adapter_index:
            raise EngineError(f"an adapter named {name!r} is already served")
        weights = read_adapter(folder, self.lora.base_rows)
        if self.lora.loaded and weights.base != next(iter(self.lora.loaded.values())).base:
            raise EngineError(f"{folder} was trained on {weights.base}, not on this server's base "
                              f"{next(iter(self.lora.loaded.values())).base}")
        tokenizer, speaker_map = load_chat_tokens(folder, tokenizer_model)
        vocab = ChatVocab(tokenizer, speaker_map, self.vocab, self.max_prompt_tokens)
        index = len(self.vocabs) if self.lora.loaded else 0
        self.lora.load(index, weights)
        if index == 0:  # the engine was built on this adapter's vocabulary: it is the default
            self.vocabs[0] = self.chat = vocab
            self.state.vocabs[0] = vocab
        else:
            self.state.add_vocab(vocab)
            self.vocabs.append(vocab)
        self.adapter_index[name] = index  # visible to requests only now, with everything in place
        return index

    # --- requests ----------------------------------------------------------------------------------
    def prepare(self, request: Request) -> Request:
        """Tokenise and check a request (in the caller's thread); EngineError for one that cannot run."""
        p = request.params
        vocab = self.vocab_for(request.adapter)
        force = vocab.token_id(p.force_speaker) if p.force_speaker else None
        forbidden = sorted({vocab.token_id(t) for t in p.forbid_speakers})
        if force is None and len(set(forbidden) & set(vocab.speakable_ids.tolist())) >= len(vocab.speakable_ids):
            raise EngineError("every speaker is forbidden")
        ids, dropped = vocab.encode(request.prompt, refuse_longer=request.strict_prompt)
        limit = min(self.row_limit, self.max_positions)
        worst = min(len(ids) + p.turns * (p.max_new_tokens + 2 + len(vocab.newline_ids)), limit) + 2
        blocks = math.ceil(worst / self.block_size)
        if self.pool is not None and blocks > self.pool.capacity:
            raise EngineError(f"this request may need {worst} tokens of KV cache, more than the {self.pool.capacity * self.block_size} "
                              "this server holds: ask for fewer turns or tokens")
        request.prepared = _Prepared(self.adapter_index[request.adapter], ids, dropped, force, forbidden,
                                     vocab.ends_at_turn_boundary(ids), limit, blocks)
        return request

    def submit(self, request: Request) -> Request:
        if not self._accepting:
            raise EngineClosed("the server is shutting down")
        if request.prepared is None:
            self.prepare(request)
        with self._lock:
            self._waiting.append(request)
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

    def stats(self) -> dict:
        graphs = getattr(self.runner, "graphs", {})
        return {"waiting": len(self._waiting), "running": len(self._rows), "steps": self.steps, "tokens": self.tokens_generated,
                "prefix_blocks_reused": self.pool.hits if self.pool else 0, "cuda_graphs": sorted(graphs),
                "graph_error": getattr(self.runner, "capture_error", None)}

    # --- the loop -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Run the loop in a background thread (the server's mode)."""
        if self._thread is None:
            self._stop, self._accepting = False, True
            self._thread = threading.Thread(target=self._loop, name="fizzbot-engine", daemon=True)
            self._thread.start()

    def stop(self, drain_s: float = 0.0) -> None:
        """Stop taking requests, let those in flight finish for up to `drain_s`, fail the rest, stop the
        loop. The engine stays usable: start() again, or generate() in the caller's thread."""
        self._accepting = False
        deadline = time.monotonic() + drain_s
        while self._thread is not None and self._busy() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._thread = None
        self._fail_all(EngineClosed("the server shut down before this request finished"))
        self._accepting = True

    def _busy(self) -> bool:
        return bool(self._rows or self._waiting or self._pending)

    def _loop(self) -> None:
        while not self._stop:
            if not self._busy():
                self._wakeup.wait(timeout=0.5)
                self._wakeup.clear()
                continue
            try:
                self.step()
            except BaseException as exc:  # the step's own handlers failed: fail what is in flight, keep serving
                logger.exception("engine step failed")
                self._fail_all(exc)

    def _fail_all(self, exc: BaseException) -> None:
        self._pending = None
        for row in list(self._rows):
            self._close(row, error=exc)
        with self._lock:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for request in waiting:
            _deliver(request, error=exc)

    @torch.inference_mode()
    def step(self) -> None:
        """One iteration: admit, prefill a chunk, decode a step, hand out what the previous one made."""
        for row in list(self._rows):
            if row.request.cancelled:
                self._close(row, error=EngineClosed("cancelled"))
        if self._to_retire:
            self.state.retire(self._to_retire)
            self._to_retire = []
        self._admit()
        running = [r for r in self._rows if r.stage == RUNNING]  # rows prefilled now decode from the next step
        plan = self._plan_prefill()
        if plan is not None and running and self._mixed_steps:
            produced = self._mixed(plan, running)
        else:
            produced = self._prefill(plan) + self._decode(running)
        ticket = self._ticket(produced) if produced else None
        if self._overlap:
            previous, self._pending = self._pending, ticket
            if previous is not None:
                self._process(previous)
        elif ticket is not None:
            self._process(ticket)

    def _admit(self) -> None:
        new: list[_Row] = []
        with self._lock:
            while self._waiting and self._free_slots:
                request = self._waiting[0]
                if request.cancelled:
                    self._waiting.popleft()
                    _deliver(request, error=EngineClosed("cancelled"))
                    continue
                prep = request.prepared
                row = _Row(request, self._free_slots[-1], self.vocabs[prep.vocab])
                if self.pool is not None:
                    self._match_prefix(row)
                    need = prep.worst_blocks - len(row.blocks)
                    if need > self.pool.available():
                        for block in row.blocks:
                            self.pool.release(block)
                        break  # waits for blocks to come back (first come, first served)
                    row.reserved = need
                    self.pool.reserved += need
                self._waiting.popleft()
                self._free_slots.pop()
                new.append(row)
        if not new:
            return
        entries = [(r.prep.vocab, r.prep.prompt_ids, r.request.params, r.prep.force_id, r.prep.forbidden, r.prep.at_speaker, r.prep.limit)
                   for r in new]
        rows = self.state.rows_for(entries)
        rows["positions"] = torch.tensor([len(r.prep.prompt_ids) for r in new], dtype=torch.long)
        rows["last"] = torch.zeros(len(new), dtype=torch.long)
        self.state.write_rows([r.slot for r in new], rows)
        if self.kv is not None:
            tables = torch.zeros(len(new), self.kv.block_table.shape[1], dtype=torch.int32)
            for i, r in enumerate(new):
                tables[i, : len(r.blocks)] = torch.tensor(r.blocks, dtype=torch.int32)
            index = host_to_device(torch.tensor([r.slot for r in new], dtype=torch.long), self.device)
            self.kv.block_table.index_copy_(0, index, host_to_device(tables, self.device))
        self._rows.extend(new)

    def _match_prefix(self, row: _Row) -> None:
        """Share the registered blocks this prompt starts with (all but its last token: one is prefilled)."""
        ids = row.prep.prompt_ids
        for key in block_keys(ids, self.block_size, row.prep.vocab, (len(ids) - 1) // self.block_size):
            block = self.pool.lookup(key)
            if block is None:
                break
            self.pool.share(block)
            row.blocks.append(block)
            row.keys.append(key)
        row.cached = row.prefilled = len(row.blocks) * self.block_size

    def _take_blocks(self, row: _Row, upto: int, writes: list) -> None:
        """Blocks for positions < upto (taken from the row's reservation)."""
        while len(row.blocks) * self.block_size < upto:
            block = self.pool.take()
            if row.reserved > 0:
                row.reserved -= 1
                self.pool.reserved -= 1
            writes.append((row.slot, len(row.blocks), block))
            row.blocks.append(block)

    def _write_tables(self, writes: list) -> None:
        if writes:
            slots, cols, blocks = zip(*writes)
            values = host_to_device(torch.tensor(blocks, dtype=torch.int32), self.device)
            index = tuple(host_to_device(torch.tensor(i, dtype=torch.long), self.device) for i in (slots, cols))
            self.kv.block_table.index_put_(index, values)

    def _plan_prefill(self):
        """The prompt chunks to prefill this step (up to prefill_chunk tokens), or None."""
        budget, chunks, rows, writes = self.prefill_chunk, [], [], []
        for row in self._rows:
            if row.stage != PREFILL or row.closed:
                continue
            if budget <= 0 and chunks:
                break
            ids = row.prep.prompt_ids
            end = len(ids) if self.pool is None else min(len(ids), row.prefilled + max(budget, 1))
            if self.pool is not None:
                self._take_blocks(row, end, writes)
            chunks.append(Chunk(row.slot, ids[row.prefilled:end], row.prefilled, row.blocks, row.prep.vocab, end == len(ids)))
            rows.append(row)
            budget -= end - row.prefilled
        return (rows, chunks, writes) if chunks else None

    def _prefill(self, plan) -> list[_Row]:
        if plan is None:
            return []
        rows, chunks, writes = plan
        if self.kv is not None:
            self._write_tables(writes)
        try:
            done = self._run_prefill(rows, chunks)
        except BaseException as exc:
            logger.warning("prefill of %d rows failed (%s)%s", len(rows), exc, ": retrying row by row" if len(rows) > 1 and self.pool else "")
            done, kept = [], []
            for row, chunk in zip(rows, chunks):
                try:  # alone (its keys and values land in its own blocks): only the rows that fail alone fail
                    if len(rows) == 1 or self.pool is None:
                        raise exc
                    done += self._run_prefill([row], [chunk])
                    kept.append((row, chunk))
                except BaseException as error:
                    self._close(row, error=error)
            rows, chunks = [r for r, _ in kept], [c for _, c in kept]
        self._prefilled(rows, chunks)
        return done

    def _prefilled(self, rows: list[_Row], chunks: list[Chunk]) -> None:
        for row, chunk in zip(rows, chunks):
            row.prefilled = chunk.end
            if self.pool is not None:
                self._register(row, row.prep.prompt_ids, chunk.end)
            if chunk.last:
                row.stage = RUNNING

    def _mixed(self, plan, running: list[_Row]) -> list[_Row]:
        """Prompt chunks and the running rows' decode step in one forward (no CUDA graph): when requests
        keep arriving, a step is one pass over the weights instead of two. If it fails, the prefill and
        the decode step run apart, each with its own row-by-row isolation."""
        rows, chunks, writes = plan
        decoding = [r for r in running if not r.closed]
        for row in decoding:
            self._take_blocks(row, row.fed + 1, writes)
        self._write_tables(writes)
        index = torch.tensor([r.slot for r in decoding], dtype=torch.long)
        last = self.state.last.index_select(0, host_to_device(index, self.device)).tolist()
        steps = [Chunk(r.slot, [token], r.fed, r.blocks, r.prep.vocab, True) for r, token in zip(decoding, last)]
        try:
            if self.faults:
                self.faults.check("prefill", [r.request.prompt for r in rows])
                self.faults.check("slow", [r.request.prompt for r in decoding])
                self.faults.check("step", [r.request.prompt for r in decoding])
            logits = self.runner.prefill(chunks + steps)
            done = [r for r, c in zip(rows, chunks) if c.last]
            sampled = host_to_device(torch.tensor([r.slot for r in done + decoding], dtype=torch.long), self.device)
            self.state.sample(logits, sampled)
            decode_index = host_to_device(index, self.device)
            self.state.positions.index_add_(0, decode_index, torch.ones_like(decode_index))
        except BaseException as exc:
            logger.warning("mixed step failed (%s): prefill and decode apart", exc)
            return self._prefill(plan) + self._decode(running)
        self._prefilled(rows, chunks)
        for row in decoding:
            row.fed += 1
        self.steps += 1
        if self.observer is not None:
            self.observer.on_step(len(decoding))
        return done + decoding

    def _run_prefill(self, rows: list[_Row], chunks: list[Chunk]) -> list[_Row]:
        self.faults.check("prefill", [r.request.prompt for r in rows])
        logits = self.runner.prefill(chunks)
        done = [r for r, c in zip(rows, chunks) if c.last]
        if done:
            self.state.sample(logits, host_to_device(torch.tensor([r.slot for r in done], dtype=torch.long), self.device))
        return done

    def _register(self, row: _Row, ids: list[int], written: int) -> None:
        """Offer the row's full blocks whose keys and values are written for reuse by later prompts."""
        full = min(written // self.block_size, len(row.blocks))
        if full > len(row.keys):
            keys = block_keys(ids, self.block_size, row.prep.vocab, full)
            for i in range(len(row.keys), full):
                self.pool.register(row.blocks[i], keys[i])
            row.keys = keys

    def _decode(self, rows: list[_Row]) -> list[_Row]:
        rows = [r for r in rows if not r.closed]
        if not rows:
            return []
        if self.pool is not None:
            writes: list = []
            for row in rows:
                self._take_blocks(row, row.fed + 1, writes)
            self._write_tables(writes)
        try:
            if self.faults:
                self.faults.check("slow", [r.request.prompt for r in rows])
                self.faults.check("step", [r.request.prompt for r in rows])
            self.runner.decode([r.slot for r in rows], max(r.fed for r in rows) + 1)
        except BaseException as exc:
            rows = self._isolate(rows, exc)
        for row in rows:
            row.fed += 1
        self.steps += 1
        if self.observer is not None:
            self.observer.on_step(len(rows))
        return rows

    def _isolate(self, rows: list[_Row], exc: BaseException) -> list[_Row]:
        """A failed step, again row by row (a row's keys and values are rewritten identically): only the
        rows that fail alone fail. The dynamic backend cannot run one row apart: all its rows fail."""
        logger.warning("decode step of %d rows failed (%s): retrying row by row", len(rows), exc)
        if self.pool is None:
            for row in rows:
                self._close(row, error=exc)
            return []
        ok = []
        for row in rows:
            try:
                self.faults.check("step", [row.request.prompt])
                self.runner.decode([row.slot], row.fed + 1, eager=True)
                ok.append(row)
            except BaseException as error:
                self._close(row, error=error)
        return ok

    # --- outputs ------------------------------------------------------------------------------------
    def _ticket(self, rows: list[_Row]):
        if not self._overlap:
            return rows, self.state.out.clone(), None
        buffer = self._pinned[self._flip]
        self._flip ^= 1
        buffer.copy_(self.state.out, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return rows, buffer, event

    def _process(self, ticket) -> None:
        rows, buffer, event = ticket
        if event is not None:
            event.synchronize()
        out = buffer.tolist()
        for row in rows:
            if row.closed:
                continue
            token, finish = out[row.slot]
            try:
                self._take(row, token, finish)
            except BaseException as exc:  # this row's text handling failed: it alone fails
                self._close(row, error=exc)

    def _take(self, row: _Row, token: int, finish: int) -> None:
        stops = row.request.params.stop
        if token >= 0:
            row.generated.append(token)
            if row.first_token_at is None:
                row.first_token_at = time.perf_counter()
            row.stream.add(token)
            self.tokens_generated += 1
        reason = FINISH_REASONS.get(finish)
        if reason is not None:
            row.stream.finish()
        if stops:
            at = find_stop(row.stream.text, stops, row.searched)
            row.searched = len(row.stream.text)
            if at >= 0:
                row.cut, reason = at, "stop"
        if reason is not None:
            self._emit(row, len(row.stream.text) if row.cut is None else row.cut)
            self._close(row, reason=reason)
        else:
            self._emit(row, len(row.stream.text) - held_back(row.stream.text, stops))

    def _emit(self, row: _Row, upto: int) -> None:
        """Stream the text up to `upto` (the part that no later stop string can take back)."""
        if row.request.on_text is not None and upto > row.sent:
            delta = row.stream.text[row.sent:upto]
            row.sent = upto
            row.request.on_text(delta)

    def _close(self, row: _Row, reason: str | None = None, error: BaseException | None = None) -> None:
        if row.closed:
            return
        row.closed = True
        self._rows.remove(row)
        self._to_retire.append(row.slot)
        self.runner.release(row.slot)
        if self.pool is not None:
            if error is None:  # keys and values are written up to the last token fed to a decode step
                self._register(row, row.prep.prompt_ids + row.generated, min(row.fed, len(row.prep.prompt_ids) + len(row.generated)))
            for block in row.blocks:
                self.pool.release(block)
            self.pool.reserved -= row.reserved
        self._free_slots.append(row.slot)
        if error is None:
            text = row.stream.text if row.cut is None else row.stream.text[: row.cut]
            now = time.perf_counter()
            result = Result(text=text, prompt_tokens=len(row.prep.prompt_ids), completion_tokens=len(row.generated),
                            finish_reason=reason or "stop", dropped_messages=row.prep.dropped, seconds=now - row.started,
                            first_token_s=None if row.first_token_at is None else row.first_token_at - row.started,
                            cached_tokens=row.cached)
            _deliver(row.request, result=result)
        else:
            _deliver(row.request, error=error)
        if self.observer is not None:
            self.observer.on_finish(row.request)


def _deliver(request: Request, result: Result | None = None, error: BaseException | None = None) -> None:
    request.result, request.error = result, error
    request.done.set()
    if request.on_done is not None:
        try:
            request.on_done(error if error is not None else result)
        except Exception:  # a caller's callback must not take the engine down
            logger.exception("on_done callback failed")


# --- loading a checkpoint ------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def engine_from_checkpoint(model_dir: str | Path, *, device: str = "auto", tokenizer_model: str | None = None, max_prompt_tokens: int = 768,
                           max_batch_size: int = 32, compile: bool = False, max_cache_len: int = 2048, backend: str = "paged",
                           kv_cache_tokens: int | None = None, prefill_chunk_tokens: int | None = None) -> GenerationEngine:
    """An engine on one checkpoint (an adapter is merged into its base: no adapter cost per token).
    `compile` captures the decode step as CUDA graphs (GPU only)."""
    from fizzbot.artifacts.loading import load_for_inference

    dev = resolve_device(device)
    model, tokenizer, speaker_map = load_for_inference(model_dir, device=dev, tokenizer_model=tokenizer_model)
    return GenerationEngine(model, tokenizer, speaker_map, max_prompt_tokens=max_prompt_tokens, max_batch_size=max_batch_size,
                            device=dev, backend=backend, graphs=compile and dev.type == "cuda", max_cache_len=max_cache_len,
                            kv_cache_tokens=kv_cache_tokens, prefill_chunk_tokens=prefill_chunk_tokens)
