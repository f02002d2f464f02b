"""Triton kernels for the GPU engine; each has a torch twin elsewhere that the CPU runs and the tests check.

- `paged_decode_attention`: one query token per row against that row's pages of the KV cache, the
  query heads of a grouped-query model taken together per KV head (so K/V are read once per group),
  split along the context (flash-decoding) so that a few long rows still fill the GPU, then the splits
  merged by their log-sum-exp. The shape of SGLang's/lightllm's grouped decode kernel, written for
  fizzbot's block tables. Twin: attention.decode_attention_torch (gather + SDPA).
- `gumbel_argmax`: argmax over the vocabulary of scaled logits plus each token's counter-based Gumbel
  noise, the hash computed in registers (the torch twin materialises [rows, vocab] int64 and float64
  temporaries: a 256-row step moved several GB for its noise). Twin: sampling.gumbel_argmax_torch.
- `lora_shrink` / `lora_expand`: per-token adapter deltas (BGMV, after Punica and S-LoRA): each token
  multiplies by its own adapter's A then B, so rows of 16 adapters share one batch and one base pass.
  Twin: lora.delta_torch (one dense product over all adapters, masked per token).

Why Triton and not FlashInfer or flex attention: FlashInfer is not on the GPU machine's image (and no
registry is reachable from it); flex attention's paged path needs a compiled block mask per shape,
which does not fit a CUDA graph replayed for every step. Triton is on the image, and its kernels are
captured in a CUDA graph like any other launch.
"""

from __future__ import annotations

import functools
import os

import torch

try:  # the CPU install has no Triton: every caller checks available() and uses the torch twin
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None


@functools.lru_cache(maxsize=None)
def _enabled() -> bool:
    return triton is not None and os.environ.get("FIZZBOT_TRITON", "1") != "0" and torch.cuda.is_available()


def available(device: torch.device) -> bool:
    """Triton kernels run here (CUDA, Triton importable, not switched off with FIZZBOT_TRITON=0)."""
    return device.type == "cuda" and _enabled()


if triton is not None:

    @triton.jit
    def _decode_split_kernel(
        Q, K, V, TABLES, LENS, MID, LSE, scale,
        stride_qb, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_tb,
        stride_mb, stride_mh, stride_ms, stride_lb, stride_lh,
        GROUP: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr, PAGE: tl.constexpr, SPLITS: tl.constexpr,
    ):
        row = tl.program_id(0)
        kv_head = tl.program_id(1)
        split = tl.program_id(2)
        h = tl.arange(0, BLOCK_H)
        head_ok = h < GROUP
        heads = kv_head * GROUP + h
        d = tl.arange(0, BLOCK_D)
        d_ok = d < HEAD_DIM
        q = tl.load(Q + row * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=head_ok[:, None] & d_ok[None, :], other=0.0)
        length = tl.load(LENS + row).to(tl.int32)
        per_split = tl.cdiv(tl.cdiv(length, SPLITS), BLOCK_N) * BLOCK_N
        start = split * per_split
        end = tl.minimum(start + per_split, length)
        m = tl.full([BLOCK_H], -1.0e30, tl.float32)  # finite: a fully masked block leaves acc and total at 0
        total = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        for n0 in range(start, start + per_split, BLOCK_N):  # past `end`: masked (the last split only)
            n = n0 + tl.arange(0, BLOCK_N)
            n_ok = n < end
            block = tl.load(TABLES + row * stride_tb + n // PAGE, mask=n_ok, other=0)
            slot = block.to(tl.int64) * PAGE + (n % PAGE)
            k = tl.load(K + slot[:, None] * stride_kt + kv_head * stride_kh + d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            qk = tl.dot(q, tl.trans(k)).to(tl.float32) * scale
            qk = tl.where(n_ok[None, :], qk, float("-inf"))
            m_new = tl.maximum(m, tl.max(qk, 1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(qk - m_new[:, None])
            v = tl.load(V + slot[:, None] * stride_vt + kv_head * stride_vh + d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
            total = total * alpha + tl.sum(p, 1)
            m = m_new
        has = end > start
        safe = tl.where(total > 0, total, 1.0)
        tl.store(MID + row * stride_mb + heads[:, None] * stride_mh + split * stride_ms + d[None, :], acc / safe[:, None],
                 mask=head_ok[:, None] & d_ok[None, :])
        lse = tl.where(has, m + tl.log(safe), float("-inf"))
        tl.store(LSE + row * stride_lb + heads * stride_lh + split, lse, mask=head_ok)

    @triton.jit
    def _decode_merge_kernel(
        MID, LSE, OUT, stride_mb, stride_mh, stride_ms, stride_lb, stride_lh, stride_ob, stride_oh,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, SPLITS: tl.constexpr,
    ):
        row = tl.program_id(0)
        head = tl.program_id(1)
        d = tl.arange(0, BLOCK_D)
        d_ok = d < HEAD_DIM
        m = float("-inf")
        total = 0.0
        acc = tl.zeros([BLOCK_D], tl.float32)
        for s in tl.static_range(SPLITS):
            lse = tl.load(LSE + row * stride_lb + head * stride_lh + s)
            part = tl.load(MID + row * stride_mb + head * stride_mh + s * stride_ms + d, mask=d_ok, other=0.0)
            m_new = tl.maximum(m, lse)
            old = tl.where(m > float("-inf"), tl.exp(m - m_new), 0.0)
            new = tl.where(lse > float("-inf"), tl.exp(lse - m_new), 0.0)
            acc = acc * old + part * new
            total = total * old + new
            m = m_new
        tl.store(OUT + row * stride_ob + head * stride_oh + d, acc / total, mask=d_ok)

    @triton.jit
    def _gumbel_max_kernel(X, KEYS, VALUES, INDICES, vocab, stride_x, chunk, BLOCK: tl.constexpr, SPLITS: tl.constexpr):
        row = tl.program_id(0)
        split = tl.program_id(1)
        key = tl.load(KEYS + row).to(tl.int64)
        start = split * chunk
        stop = tl.minimum(start + chunk, vocab)
        best = tl.full([BLOCK], float("-inf"), tl.float32)
        best_i = tl.zeros([BLOCK], tl.int64)
        for off in range(start, start + chunk, BLOCK):
            i = off + tl.arange(0, BLOCK)
            ok = i < stop
            x = tl.load(X + row * stride_x + i, mask=ok, other=float("-inf")).to(tl.float32)
            # lowbias32 of (id * golden + key) in int64 arithmetic, exactly as sampling.hash32 does it
            h = (i.to(tl.int64) * 0x9E3779B1 + key) & 0xFFFFFFFF
            h = h ^ (h >> 16)
            h = (h * 0x7FEB352D) & 0xFFFFFFFF
            h = h ^ (h >> 15)
            h = (h * 0x846CA68B) & 0xFFFFFFFF
            h = h ^ (h >> 16)
            u = (h.to(tl.float64) + 0.5) / 4294967296.0
            g = (-tl.log(-tl.log(u))).to(tl.float32)
            s = tl.where(ok, x + g, float("-inf"))
            better = s > best
            best = tl.where(better, s, best)
            best_i = tl.where(better, i.to(tl.int64), best_i)
        top = tl.max(best, 0)
        index = tl.min(tl.where(best == top, best_i, 0x7FFFFFFFFFFFFFFF), 0)
        tl.store(VALUES + row * SPLITS + split, top)
        tl.store(INDICES + row * SPLITS + split, index)

    @triton.jit
    def _lora_shrink_kernel(X, A, IDS, OUT, in_dim, stride_x, stride_an, stride_ar, stride_o,
                            RANK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
        t = tl.program_id(0)
        adapter = tl.load(IDS + t)
        r = tl.arange(0, BLOCK_R)
        r_ok = r < RANK
        acc = tl.zeros([BLOCK_R], tl.float32)
        if adapter >= 0:
            for k0 in range(0, in_dim, BLOCK_K):
                k = k0 + tl.arange(0, BLOCK_K)
                k_ok = k < in_dim
                x = tl.load(X + t * stride_x + k, mask=k_ok, other=0.0).to(tl.float32)
                w = tl.load(A + adapter * stride_an + r[:, None] * stride_ar + k[None, :], mask=r_ok[:, None] & k_ok[None, :], other=0.0)
                acc += tl.sum(w.to(tl.float32) * x[None, :], 1)
        tl.store(OUT + t * stride_o + r, acc, mask=r_ok)

    @triton.jit
    def _lora_expand_kernel(H, B, IDS, SCALES, Y, out_dim, stride_h, stride_bn, stride_bo, stride_y,
                            RANK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_O: tl.constexpr):
        t = tl.program_id(0)
        block = tl.program_id(1)
        adapter = tl.load(IDS + t)
        if adapter >= 0:
            o = block * BLOCK_O + tl.arange(0, BLOCK_O)
            o_ok = o < out_dim
            r = tl.arange(0, BLOCK_R)
            r_ok = r < RANK
            h = tl.load(H + t * stride_h + r, mask=r_ok, other=0.0)
            w = tl.load(B + adapter * stride_bn + o[:, None] * stride_bo + r[None, :], mask=o_ok[:, None] & r_ok[None, :], other=0.0)
            delta = tl.sum(w.to(tl.float32) * h[None, :], 1) * tl.load(SCALES + adapter)
            y = tl.load(Y + t * stride_y + o, mask=o_ok, other=0.0)
            tl.store(Y + t * stride_y + o, (y.to(tl.float32) + delta).to(y.dtype), mask=o_ok)


def _splits(rows: int, kv_heads: int) -> int:
    """Context splits per row: enough programs to fill ~2 waves of an H100/H200's 132 SMs."""
    want = max(1, 264 // max(1, rows * kv_heads))
    return min(16, 1 << (want - 1).bit_length())


def paged_decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, tables: torch.Tensor,
                           lengths: torch.Tensor, scale: float, page: int) -> torch.Tensor:
    """q [rows, heads, dim]; keys/values [slots, kv_heads, dim]; tables [rows, max_blocks]; lengths [rows]."""
    rows, heads, dim = q.shape
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    splits = _splits(rows, kv_heads)
    q, lengths = q.to(keys.dtype).contiguous(), lengths.contiguous()
    mid = torch.empty(rows, heads, splits, dim, dtype=torch.float32, device=q.device)
    lse = torch.empty(rows, heads, splits, dtype=torch.float32, device=q.device)
    out = torch.empty(rows, heads, dim, dtype=torch.float32, device=q.device)
    block_d = max(16, triton.next_power_of_2(dim))
    _decode_split_kernel[(rows, kv_heads, splits)](
        q, keys, values, tables, lengths, mid, lse, scale,
        q.stride(0), q.stride(1), keys.stride(0), keys.stride(1), values.stride(0), values.stride(1), tables.stride(0),
        mid.stride(0), mid.stride(1), mid.stride(2), lse.stride(0), lse.stride(1),
        GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)), HEAD_DIM=dim, BLOCK_D=block_d,
        BLOCK_N=64 if block_d <= 128 else 32, PAGE=page, SPLITS=splits, num_warps=4, num_stages=2,
    )
    _decode_merge_kernel[(rows, heads)](
        mid, lse, out, mid.stride(0), mid.stride(1), mid.stride(2), lse.stride(0), lse.stride(1), out.stride(0), out.stride(1),
        HEAD_DIM=dim, BLOCK_D=block_d, SPLITS=splits, num_warps=1,
    )
    return out


def gumbel_argmax(scaled: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    rows, vocab = scaled.shape
    splits = 32
    chunk = triton.cdiv(vocab, splits)
    scaled = scaled.contiguous()
    values = torch.empty(rows, splits, dtype=torch.float32, device=scaled.device)
    indices = torch.empty(rows, splits, dtype=torch.int64, device=scaled.device)
    _gumbel_max_kernel[(rows, splits)](scaled, keys.contiguous(), values, indices, vocab, scaled.stride(0), chunk,
                                       BLOCK=1024, SPLITS=splits, num_warps=4)
    return indices.gather(1, values.argmax(dim=1, keepdim=True)).squeeze(1)


def lora_shrink(x: torch.Tensor, a: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x [T, in]; a [adapters, rank, in]; ids [T] (-1: none) -> [T, rank] float32."""
    tokens, in_dim = x.shape
    rank = a.shape[1]
    ids, a = ids.contiguous(), a.contiguous()  # indexed flat
    out = torch.empty(tokens, rank, dtype=torch.float32, device=x.device)
    _lora_shrink_kernel[(tokens,)](x, a, ids, out, in_dim, x.stride(0), a.stride(0), a.stride(1), out.stride(0),
                                   RANK=rank, BLOCK_R=max(16, triton.next_power_of_2(rank)), BLOCK_K=128, num_warps=4)
    return out


def lora_expand(h: torch.Tensor, b: torch.Tensor, ids: torch.Tensor, scales: torch.Tensor, y: torch.Tensor) -> None:
    """y [T, out] += scales[ids] * h [T, rank] @ b[ids] [out, rank]^T, in place (rows with id -1 untouched)."""
    tokens, out_dim = y.shape
    rank = b.shape[2]
    ids = ids.contiguous()  # indexed flat (a column of the slot state is not)
    block_o = 128
    _lora_expand_kernel[(tokens, triton.cdiv(out_dim, block_o))](
        h, b, ids, scales, y, out_dim, h.stride(0), b.stride(0), b.stride(1), y.stride(0),
        RANK=rank, BLOCK_R=max(16, triton.next_power_of_2(rank)), BLOCK_O=block_o, num_warps=4,
    )
