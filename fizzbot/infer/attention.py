"""Attention for the engine, plugged into Hugging Face models through transformers' AttentionInterface.

The model's own modules keep doing projections, norms, RoPE and MLPs; only the attention call is
ours. Two functions:

- `paged_attention` (the engine's paged KV cache): the model runs with no transformers cache at all
  (`use_cache=False`), so each layer hands us only the new tokens' keys and values. We store them
  in the paged cache at the batch's slot mapping, then attend over each row's pages: a Triton kernel
  on CUDA (fizzbot/infer/kernels.py), a gather + SDPA elsewhere. A decode batch is [rows, 1]; a
  prefill batch is every new prompt chunk packed into one sequence [1, tokens], each chunk attending
  to its own row's cached prefix and causally within itself (chunked prefill, prefix reuse).
- `decode_sdpa` (the dynamic reference backend, transformers' DynamicCache): one query token
  attends without repeating KV heads. transformers' SDPA path repeats each key/value head for its
  group of query heads (for a 0.5B Qwen model decoding 32 rows over 1.5k tokens ~8 GB of memory
  traffic a step); with one query token the group's heads can instead play the query positions.

The batch the paged function reads is set by the runner around each forward (`using`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DECODE_SDPA = "fizzbot_decode_sdpa"
PAGED = "fizzbot_paged"


@dataclass
class PagedBatch:
    """What one forward's attention (and LoRA) layers read."""

    kv: object  # fizzbot.infer.kv_cache.PagedKV
    slot_mapping: torch.Tensor  # [tokens]: cache slot of each new token
    decode: bool
    # decode: one token per row
    block_tables: torch.Tensor | None = None  # [rows, max_blocks] int32
    context_lens: torch.Tensor | None = None  # [rows]: keys each row attends to (its new token included)
    max_context: int = 0  # keys the torch fallback gathers per row
    # prefill: packed chunks, padded per sequence for the attention
    query_index: torch.Tensor | None = None  # [seqs, q_max]: packed index of each sequence's queries
    query_pos: torch.Tensor | None = None  # [seqs, q_max]: their positions (padding: past every key)
    query_valid: torch.Tensor | None = None  # [seqs, q_max]
    key_slots: torch.Tensor | None = None  # [seqs, k_max]: cache slots of each sequence's keys
    key_valid: torch.Tensor | None = None  # [seqs, k_max]
    single_index: torch.Tensor | None = None  # packed index of one-token chunks (decode steps riding along),
    # which attend like a decode batch (block_tables, context_lens, max_context describe them)
    adapter_ids: torch.Tensor | None = None  # [tokens]: LoRA adapter of each token (-1: the base alone)
    logit_adapter_ids: torch.Tensor | None = None  # the same for the positions whose logits are computed


_current: PagedBatch | None = None


@contextlib.contextmanager
def using(batch: PagedBatch):
    global _current
    previous, _current = _current, batch
    try:
        yield batch
    finally:
        _current = previous


def current() -> PagedBatch | None:
    return _current


def paged_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs):
    batch = _current
    if batch is None:  # a forward outside the engine (a test, a probe): plain attention
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    from fizzbot.infer import kernels

    layer = module.layer_idx
    keys, values = batch.kv.keys[layer], batch.kv.values[layer]
    rows, heads, tokens, dim = query.shape
    kv_heads = key.shape[1]
    scale = scaling if scaling is not None else dim ** -0.5
    new_keys = key.transpose(1, 2).reshape(rows * tokens, kv_heads, dim)
    new_values = value.transpose(1, 2).reshape(rows * tokens, kv_heads, dim)
    keys.index_copy_(0, batch.slot_mapping, new_keys.to(keys.dtype))
    values.index_copy_(0, batch.slot_mapping, new_values.to(values.dtype))
    if batch.decode:
        q = query[:, :, 0, :]
        if kernels.available(q.device):
            out = kernels.paged_decode_attention(q, keys, values, batch.block_tables, batch.context_lens, scale, batch.kv.block_size)
        else:
            out = decode_attention_torch(q, keys, values, batch, scale)
        return out[:, None].to(query.dtype), None  # [rows, 1, heads, dim]
    q = query[0].transpose(0, 1)  # [tokens, heads, dim]
    out = torch.empty(tokens, heads, dim, dtype=query.dtype, device=query.device)
    if batch.query_index is not None:
        prefill_attention_torch(q, keys, values, batch, scale, out)
    if batch.single_index is not None:
        one = q.index_select(0, batch.single_index)
        if kernels.available(q.device):
            part = kernels.paged_decode_attention(one, keys, values, batch.block_tables, batch.context_lens, scale, batch.kv.block_size)
        else:
            part = decode_attention_torch(one, keys, values, batch, scale)
        out[batch.single_index] = part.to(out.dtype)
    return out[None], None  # [1, tokens, heads, dim]


def decode_attention_torch(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, batch: PagedBatch, scale: float) -> torch.Tensor:
    """q [rows, heads, dim] against each row's first context_lens keys: gathered, then SDPA."""
    rows, heads, dim = q.shape
    kv_heads = keys.shape[1]
    length = batch.max_context
    positions = torch.arange(length, device=q.device)[None, :].expand(rows, length)
    valid = positions < batch.context_lens[:, None]
    # Slots past a row's length may never have been written (uninitialised memory, NaN): they read
    # slot 0 instead, which the cache keeps finite (PagedKV zeroes block 0).
    slots = torch.where(valid, batch.kv.slots_for(batch.block_tables, positions), 0)
    k = keys[slots].permute(0, 2, 1, 3)  # [rows, kv_heads, length, dim]
    v = values[slots].permute(0, 2, 1, 3)
    mask = valid[:, None, None, :]
    grouped = q.reshape(rows, kv_heads, heads // kv_heads, dim).to(k.dtype)
    out = F.scaled_dot_product_attention(grouped, k, v, attn_mask=mask, scale=scale)
    return out.reshape(rows, heads, dim)


def prefill_attention_torch(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, batch: PagedBatch, scale: float,
                            packed: torch.Tensor) -> None:
    """q [tokens, heads, dim] of packed chunks: each sequence's queries against its cached keys,
    causally; written into `packed` at the queries' places."""
    tokens, heads, dim = q.shape
    kv_heads = keys.shape[1]
    queries = q[batch.query_index].permute(0, 2, 1, 3)  # [seqs, heads, q_max, dim]
    k = keys[batch.key_slots].permute(0, 2, 1, 3)  # [seqs, kv_heads, k_max, dim] (padding keys read slot 0)
    v = values[batch.key_slots].permute(0, 2, 1, 3)
    key_pos = torch.arange(k.shape[2], device=q.device)
    mask = batch.key_valid[:, None, None, :] & (key_pos[None, None, None, :] <= batch.query_pos[:, None, :, None])
    if kv_heads != heads:
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    out = F.scaled_dot_product_attention(queries.to(k.dtype), k, v, attn_mask=mask, scale=scale)  # [seqs, heads, q_max, dim]
    out = out.permute(0, 2, 1, 3)[batch.query_valid]  # [valid tokens, heads, dim], in (sequence, position) order
    packed[batch.query_index[batch.query_valid]] = out.to(packed.dtype)


def decode_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    mask_per_head = attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[1] != 1
    if query.shape[2] != 1 or groups == 1 or mask_per_head:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    batch, heads, _, dim = query.shape
    # Query head i belongs to key/value head i // groups (the order repeat_kv expands them in).
    grouped = query.reshape(batch, heads // groups, groups, dim)
    out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask, scale=scaling, is_causal=False)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def use_attention(model, name: str) -> bool:
    """Switch an sdpa model to one of ours; False (and no change) where the model is not an sdpa one."""
    from transformers import AttentionInterface

    if getattr(model.config, "_attn_implementation", None) not in ("sdpa", DECODE_SDPA, PAGED):
        return False
    AttentionInterface.register(name, paged_attention if name == PAGED else decode_sdpa)
    if name == DECODE_SDPA:
        # The dynamic backend passes 2D/4D masks: transformers builds them as for sdpa.
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)
    # The paged function registers no mask function: transformers then builds no mask at all
    # (each row's span comes from the batch), which also keeps the forward free of host syncs.
    try:
        model.set_attn_implementation(name)
    except (ValueError, AttributeError, TypeError):
        model.config._attn_implementation = name
    return True
