"""The model forward for the engine: packed prefill chunks, and decode steps (captured as CUDA graphs).

Two backends with one interface (`prefill`, `decode`, `release`):

- `PagedRunner` (the engine's): the paged KV cache of kv_cache.py, read and written by our attention
  function (attention.py) while the Hugging Face modules do the rest. Prefill packs every new prompt
  chunk into one sequence [1, tokens]; decode is [rows, 1]. On CUDA with `graphs=True` the whole decode
  step (forward, sampling, grammar, bookkeeping: sampling.SlotState.sample) is captured once per batch
  size bucket and replayed: the only host work per step is writing the bucket's slot list.
- `DynamicRunner` (the reference): transformers' own DynamicCache, rows left-padded to the longest.
  It is what the paged path is tested against, and the fallback for a model whose attention cannot
  be replaced.
"""

from __future__ import annotations

import inspect
import logging
import math

import torch

from fizzbot.infer.attention import DECODE_SDPA, PAGED, PagedBatch, use_attention, using
from fizzbot.infer.kv_cache import PagedKV
from fizzbot.infer.sampling import VOCAB, SlotState, host_to_device

logger = logging.getLogger("fizzbot.engine")


class Chunk:
    """Tokens of one row to run through a packed forward: `tokens` at positions start..end-1 (a piece of
    its prompt, or its latest token as a decode step)."""

    __slots__ = ("slot", "tokens", "start", "blocks", "adapter", "last")

    def __init__(self, slot: int, tokens: list[int], start: int, blocks: list[int], adapter: int, last: bool):
        self.slot, self.tokens, self.start, self.blocks, self.adapter, self.last = slot, tokens, start, blocks, adapter, last

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)


def graph_buckets(max_rows: int) -> list[int]:
    """Decode batch sizes that get a CUDA graph: 1, 2, 4, 8, then every 8 to 64, every 32 past it."""
    sizes = [n for n in (1, 2, 4) if n < max_rows] + list(range(8, min(max_rows, 64) + 1, 8))
    sizes += list(range(96, max_rows + 1, 32))
    if not sizes or sizes[-1] != max_rows:
        sizes.append(max_rows)
    return sorted(set(sizes))


class PagedRunner:
    def __init__(self, model, state: SlotState, kv: PagedKV, device: torch.device, *, graphs: bool, lora=None):
        if not use_attention(model, PAGED):
            raise ValueError(f"the paged KV cache needs an sdpa model (this one uses {model.config._attn_implementation!r})")
        self.model, self.state, self.kv, self.device, self.lora = model, state, kv, device, lora
        self.max_context = kv.block_table.shape[1] * kv.block_size
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.capture_error: str | None = None
        self.buckets: list[int] = graph_buckets(state.slots) if graphs and device.type == "cuda" else []
        self._pool = None

    # --- prefill --------------------------------------------------------------------------------
    def prefill(self, chunks: list[Chunk]) -> torch.Tensor:
        """Run the chunks packed in one forward (KV written to the cache); logits [chunks with `last`, vocab].
        One-token chunks (a row's decode step riding along) attend like a decode step; longer ones are
        padded per sequence for one SDPA call."""
        ids, positions, slots, adapters, keep = [], [], [], [], []
        multi, single = [], []  # (packed index of the first token, chunk)
        bs = self.kv.block_size
        for c in chunks:
            (single if len(c.tokens) == 1 else multi).append((len(ids), c))
            ids.extend(c.tokens)
            positions.extend(range(c.start, c.end))
            slots.extend(c.blocks[p // bs] * bs + p % bs for p in range(c.start, c.end))
            adapters.extend([c.adapter] * len(c.tokens))
            if c.last:
                keep.append(len(ids) - 1)

        def dev(t: torch.Tensor) -> torch.Tensor:
            return host_to_device(t, self.device)

        batch = PagedBatch(kv=self.kv, slot_mapping=dev(torch.tensor(slots, dtype=torch.long)), decode=False)
        if multi:
            q_max = max(len(c.tokens) for _, c in multi)
            k_max = max(c.end for _, c in multi)
            query_index = torch.zeros(len(multi), q_max, dtype=torch.long)
            query_pos = torch.full((len(multi), q_max), k_max, dtype=torch.long)  # padding queries see every key: no NaN rows
            query_valid = torch.zeros(len(multi), q_max, dtype=torch.bool)
            key_slots = torch.zeros(len(multi), k_max, dtype=torch.long)  # padding keys read slot 0 (zeros)
            key_valid = torch.zeros(len(multi), k_max, dtype=torch.bool)
            for i, (first, c) in enumerate(multi):
                n, ctx = len(c.tokens), c.end
                query_index[i, :n] = torch.arange(first, first + n)
                query_pos[i, :n] = torch.arange(ctx - n, ctx)
                query_valid[i, :n] = True
                table = torch.tensor(c.blocks[: math.ceil(ctx / bs)], dtype=torch.long)
                key_slots[i, :ctx] = (table[:, None] * bs + torch.arange(bs)[None, :]).view(-1)[:ctx]
                key_valid[i, :ctx] = True
            batch.query_index, batch.query_pos, batch.query_valid = dev(query_index), dev(query_pos), dev(query_valid)
            batch.key_slots, batch.key_valid = dev(key_slots), dev(key_valid)
        if single:
            batch.single_index = dev(torch.tensor([first for first, _ in single], dtype=torch.long))
            batch.block_tables = self.kv.block_table.index_select(0, dev(torch.tensor([c.slot for _, c in single], dtype=torch.long)))
            batch.context_lens = dev(torch.tensor([c.end for _, c in single], dtype=torch.long))
            batch.max_context = max(c.end for _, c in single)
        if self.lora is not None:
            batch.adapter_ids = dev(torch.tensor(adapters, dtype=torch.long))
            batch.logit_adapter_ids = dev(torch.tensor([adapters[i] for i in keep], dtype=torch.long))
        with using(batch):
            out = self.model(
                input_ids=dev(torch.tensor([ids], dtype=torch.long)), position_ids=dev(torch.tensor([positions], dtype=torch.long)),
                use_cache=False, logits_to_keep=dev(torch.tensor(keep, dtype=torch.long)),
            )
        return out.logits[0]

    # --- decode ---------------------------------------------------------------------------------
    def decode(self, slots: list[int], max_context: int, eager: bool = False) -> None:
        """One step for these slots: forward, sample, advance (state.out holds the result)."""
        if self.buckets and not eager:
            size = next((b for b in self.buckets if b >= len(slots)), None)
            if size is not None:
                graph, index = self._graph(size)
                padded = slots + [self.state.padding_slot] * (size - len(slots))
                index.copy_(torch.tensor(padded, dtype=torch.long).pin_memory(), non_blocking=True)
                graph.replay()
                return
        self._step(host_to_device(torch.tensor(slots, dtype=torch.long), self.device), max_context)

    def _step(self, index: torch.Tensor, max_context: int) -> None:
        s = self.state
        positions = s.positions.index_select(0, index)
        tables = self.kv.block_table.index_select(0, index)
        slot_mapping = self.kv.slots_for(tables, positions[:, None])[:, 0]
        adapters = s.ints.index_select(0, index)[:, VOCAB].contiguous() if self.lora is not None else None  # kernels index it flat
        batch = PagedBatch(kv=self.kv, slot_mapping=slot_mapping, decode=True, block_tables=tables,
                           context_lens=positions + 1, max_context=max_context, adapter_ids=adapters, logit_adapter_ids=adapters)
        with using(batch):
            logits = self.model(input_ids=s.last.index_select(0, index)[:, None], position_ids=positions[:, None], use_cache=False).logits[:, -1]
        s.sample(logits, index)
        s.positions.index_copy_(0, index, positions + 1)
        s.positions.narrow(0, s.padding_slot, 1).zero_()  # padding rows of a graph bucket stay in block 0

    def _graph(self, size: int):
        if size not in self.graphs:
            index = torch.full((size,), self.state.padding_slot, dtype=torch.long, device=self.device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside the graph (Triton compiles, cuBLAS picks kernels)
                    self._step(index, self.max_context)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                self._step(index, self.max_context)
            self._pool = graph.pool()
            self.graphs[size] = (graph, index)
        return self.graphs[size]

    def capture_all(self) -> None:
        """Capture every bucket now (largest first, so the smaller ones fit in its memory pool). A model
        whose forward cannot be captured runs eagerly (logged, and shown by the server's /healthz)."""
        try:
            for size in sorted(self.buckets, reverse=True):
                self._graph(size)
        except Exception as exc:  # noqa: BLE001 - eager decoding still serves
            logger.warning("CUDA graph capture failed, decoding eagerly: %s", exc)
            self.capture_error = f"{type(exc).__name__}: {exc}"[:500]
            self.buckets, self.graphs, self._pool = [], {}, None
            torch.cuda.synchronize()

    def release(self, slot: int) -> None:
        pass  # the engine returns the row's blocks to the pool


def cache_kwarg(model) -> str:
    """transformers 5 renamed the forward's `past_key_values` to `cache` (the old name goes in 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class DynamicRunner:
    """transformers' DynamicCache, rows left-padded to the longest; joins by concatenation, leaves by index."""

    def __init__(self, model, state: SlotState, device: torch.device, pad_id: int):
        use_attention(model, DECODE_SDPA)
        self.model, self.state, self.device, self.pad_id = model, state, device, pad_id
        self._kwarg = cache_kwarg(model)
        self.cache = None
        self.mask: torch.Tensor | None = None
        self.order: list[int] = []  # slot of each cache row
        self._joining: list = []  # prefilled rows that join the batch at their first decode step

    def prefill(self, chunks: list[Chunk]) -> torch.Tensor:
        from transformers import DynamicCache

        prompts = [c.tokens for c in chunks]
        longest = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), longest), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, longest - len(p):] = torch.tensor(p)
            mask[i, longest - len(p):] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        ids, mask, positions = ids.to(self.device), mask.to(self.device), positions.to(self.device)
        cache = DynamicCache()
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1, **{self._kwarg: cache})
        self._joining.append([cache, mask, [c.slot for c in chunks]])
        return out.logits[:, -1, :]

    def decode(self, slots: list[int], max_context: int, eager: bool = False) -> None:
        s = self.state
        wanted = set(slots)
        for joining in [j for j in self._joining if wanted & set(j[2])]:  # rows prefilled together start together
            self._merge(*joining)
            self._joining.remove(joining)
        if slots != self.order:
            self._select(slots)
        index = torch.tensor(slots, dtype=torch.long, device=self.device)
        mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        positions = s.positions.index_select(0, index)
        # One query token per row: its 4D mask is the 2D one, broadcast; given in that form,
        # transformers uses it as is instead of building it anew.
        out = self.model(input_ids=s.last.index_select(0, index)[:, None], attention_mask=mask[:, None, None, :].bool(),
                         position_ids=positions[:, None], use_cache=True, **{self._kwarg: self.cache})
        self.mask = mask
        s.sample(out.logits[:, -1, :], index)
        s.positions.index_copy_(0, index, positions + 1)

    def release(self, slot: int) -> None:
        if slot in self.order:
            self._select([s for s in self.order if s != slot])
        for joining in self._joining:
            cache, mask, slots = joining
            if slot in slots:  # a row that ended before its first decode step: its batch-mates stay
                index = torch.tensor([i for i, s in enumerate(slots) if s != slot], device=self.device)
                for layer in cache.layers:
                    layer.keys, layer.values = layer.keys[index], layer.values[index]
                joining[1], joining[2] = mask[index], [s for s in slots if s != slot]

    def _select(self, slots: list[int]) -> None:
        keep = [self.order.index(s) for s in slots]
        if not keep:
            self.cache, self.mask, self.order = None, None, []
            return
        index = torch.tensor(keep, device=self.device)
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index], layer.values[index]
        self.mask, self.order = self.mask[index], list(slots)
        # Columns that are padding for every remaining row go: the batch stays as long as its longest row.
        live = self.mask.any(dim=0).nonzero()
        first = int(live[0]) if len(live) else 0
        if first > 0:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self.mask = self.mask[:, first:]

    def _merge(self, cache, mask: torch.Tensor, slots: list[int]) -> None:
        if self.cache is None:
            self.cache, self.mask, self.order = cache, mask, list(slots)
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_left_pad(old.keys, width, 2), _left_pad(new.keys, width, 2)])
            old.values = torch.cat([_left_pad(old.values, width, 2), _left_pad(new.values, width, 2)])
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)])
        self.order = self.order + list(slots)


def _left_pad(t: torch.Tensor, to: int, dim: int) -> torch.Tensor:
    if t.shape[dim] == to:
        return t
    shape = list(t.shape)
    shape[dim] = to - t.shape[dim]
    return torch.cat([t.new_zeros(shape), t], dim=dim)
