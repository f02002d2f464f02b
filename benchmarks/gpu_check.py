#!/usr/bin/env python
"""The GPU path checked against its torch twins, before any figure is taken from it.

    python benchmarks/gpu_check.py            (on a CUDA machine; TRITON_INTERPRET=1 runs the kernel part on CPU)

1. kernels, on fresh random bf16 inputs, against the torch twin computed in float32:
   paged decode attention (grouped-query shapes, mixed lengths, scattered blocks), the fused Gumbel
   argmax (agreement with the torch twin), LoRA shrink/expand (BGMV) against a per-token loop;
2. the engine on a small random Qwen-shaped model: the decode step replayed from CUDA graphs against
   the same engine without graphs, and the paged cache against transformers' DynamicCache (texts
   for fixed seeds; on bf16 a late token may differ from rounding: the share of equal texts and the
   mean common prefix are printed).
Writes $OUT/gpu_check.json; a failed part is recorded and the next one runs.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


def check_kernels(device: torch.device) -> dict:
    from fizzbot.infer import kernels
    from fizzbot.infer.attention import PagedBatch, decode_attention_torch
    from fizzbot.infer.kv_cache import PagedKV
    from fizzbot.infer.sampling import gumbel_argmax_torch

    out: dict = {}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for rows, heads, kv_heads, dim, page in [(1, 14, 2, 64, 16), (7, 14, 2, 64, 16), (64, 14, 2, 64, 16), (33, 8, 8, 128, 16), (5, 32, 4, 128, 32)]:
        blocks = rows * 64 + 1
        kv = PagedKV(1, blocks, page, kv_heads, dim, rows, 64, dtype, device)
        kv.keys[0].normal_()
        kv.values[0].normal_()
        lengths = torch.randint(1, 64 * page, (rows,), device=device)
        perm = torch.randperm(blocks - 1, device=device)[: rows * 64] + 1
        kv.block_table.copy_(perm.view(rows, 64).int())
        q = torch.randn(rows, heads, dim, device=device, dtype=dtype)
        batch = PagedBatch(kv=kv, slot_mapping=None, decode=True, block_tables=kv.block_table, context_lens=lengths, max_context=64 * page)
        ref = decode_attention_torch(q.float(), kv.keys[0].float(), kv.values[0].float(), batch, dim ** -0.5)
        got = kernels.paged_decode_attention(q, kv.keys[0], kv.values[0], kv.block_table, lengths, dim ** -0.5, page)
        err = rel(got, ref)
        out[f"attention_{rows}x{heads}/{kv_heads}x{dim}_page{page}"] = err
        assert torch.isfinite(got).all() and err < 2e-2, err
    agree = []
    for rows, vocab in [(3, 5000), (64, 151936), (256, 151936)]:
        scaled = torch.randn(rows, vocab, device=device) * 3
        scaled[:, ::7] = float("-inf")
        keys = torch.randint(0, 2**32, (rows,), device=device, dtype=torch.int64)
        agree.append(float((kernels.gumbel_argmax(scaled, keys) == gumbel_argmax_torch(scaled, keys)).float().mean()))
    out["gumbel_argmax_agreement"] = agree
    assert min(agree) > 0.99, agree
    tokens, d_in, d_out, rank, adapters = 96, 896, 4864, 16, 5
    x = torch.randn(tokens, d_in, device=device, dtype=dtype)
    a = torch.randn(adapters, rank, d_in, device=device, dtype=dtype) / 30
    b = torch.randn(adapters, d_out, rank, device=device, dtype=dtype) / 4
    ids = torch.randint(-1, adapters, (tokens,), device=device)
    scales = torch.rand(adapters, device=device)
    y = torch.randn(tokens, d_out, device=device, dtype=dtype)
    expected = y.float().clone()
    for t in range(tokens):
        i = int(ids[t])
        if i >= 0:
            expected[t] += scales[i] * (b[i].float() @ (a[i].float() @ x[t].float()))
    kernels.lora_expand(kernels.lora_shrink(x, a, ids), b, ids, scales, y)
    out["lora_bgmv"] = rel(y, expected)
    assert out["lora_bgmv"] < 2e-2
    return out


def tiny_qwen(folder: Path):
    """A small random Qwen2 model (GQA 4/2) with the demo tokenizer, saved as a fizzbot checkpoint."""
    import random

    from transformers import AutoModelForCausalLM, Qwen2Config

    from fizzbot.chat.speakers import SpeakerMap
    from fizzbot.model.tokenizer import add_chat_tokens, train_tiny_tokenizer

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 6))) for _ in range(500)]
    tokenizer = train_tiny_tokenizer([" ".join(rng.choice(words) for _ in range(10)) for _ in range(2000)], 800)
    smap = SpeakerMap.from_json({f"<S{i}>": f"user{i}" for i in range(8)})
    add_chat_tokens(tokenizer, smap.tokens)
    torch.manual_seed(0)
    cfg = Qwen2Config(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=True,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    smap.save(folder / "speaker_map.json")
    prompts = ["".join(f"<S{rng.randrange(8)}> " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + " <EOT>\n"
                       for _ in range(rng.randint(1, 12))) for _ in range(24)]
    return folder, prompts


def check_engine(device: torch.device, work: Path) -> dict:
    from fizzbot.infer.engine import Request, SamplingParams, engine_from_checkpoint

    folder, prompts = tiny_qwen(work / "tiny-qwen")
    requests = lambda: [Request(p, SamplingParams(turns=3, max_new_tokens=24, seed=i, temperature=0.8, top_p=0.95)) for i, p in enumerate(prompts)]
    texts = {}
    variants = [("graph", dict(compile=True)), ("eager", dict(compile=False)), ("dynamic", dict(backend="dynamic"))]
    for name, kwargs in variants[: 2 if os.environ.get("FIZZBOT_CHECK_QUICK") else 3]:
        engine = engine_from_checkpoint(folder, device=str(device), max_batch_size=16, max_prompt_tokens=256, **kwargs)
        start = time.perf_counter()
        texts[name] = [r.text for r in engine.generate(requests())]
        texts[name + "_s"] = time.perf_counter() - start
        if name == "graph":
            texts["graph_buckets"] = sorted(engine.runner.graphs)
            texts["graph_error"] = engine.runner.capture_error
            texts["graph_alone"] = [engine.generate([r])[0].text for r in requests()[:4]]
        del engine
        torch.cuda.empty_cache() if device.type == "cuda" else None

    def compare(a: list[str], b: list[str]) -> dict:
        prefix = [next((i for i, (x, y) in enumerate(zip(s, t)) if x != y), min(len(s), len(t))) for s, t in zip(a, b)]
        return {"equal": sum(x == y for x, y in zip(a, b)) / len(a), "mean_common_prefix_chars": sum(prefix) / len(prefix),
                "mean_chars": sum(len(x) for x in a) / len(a)}

    return {"graph_vs_eager": compare(texts["graph"], texts["eager"]),
            "eager_vs_dynamic": compare(texts["eager"], texts["dynamic"]) if "dynamic" in texts else None,
            "graph_batched_vs_alone": compare(texts["graph"][:4], texts["graph_alone"]), "buckets": texts["graph_buckets"],
            "graph_error": texts["graph_error"],
            "seconds": {k: round(v, 2) for k, v in texts.items() if k.endswith("_s")}, "sample": texts["graph"][0][:200]}


def engine_throughput(device: torch.device, work: Path) -> dict:
    """The engine in this process on the Qwen2.5-0.5B shape (CUDA graphs): 1 turn of 128 tokens per request."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_serve import gpu_checkpoint

    from fizzbot.infer.engine import Request, SamplingParams, engine_from_checkpoint

    ckpt, prompts = gpu_checkpoint(work)
    out: dict = {}
    start = time.perf_counter()
    engine = engine_from_checkpoint(ckpt, device=str(device), max_batch_size=256, max_prompt_tokens=512, compile=True, max_cache_len=1024)
    engine.runner.capture_all()
    out["load_and_capture_s"] = round(time.perf_counter() - start, 1)
    params = lambda i: SamplingParams(max_new_tokens=128, turns=1, temperature=0.8, top_p=0.95, eos_stop=False, seed=i)
    for n in (1, 64, 256):
        requests = [Request(prompts[i % len(prompts)], params(i)) for i in range(n)]
        steps = engine.steps
        torch.cuda.synchronize()
        t = time.perf_counter()
        results = engine.generate(requests)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        tokens = sum(r.completion_tokens for r in results)
        out[f"rows_{n}"] = {"tokens_per_s": round(tokens / seconds), "ms_per_step": round(1000 * seconds / max(1, engine.steps - steps), 2),
                            "tokens": tokens}
        print(n, out[f"rows_{n}"], flush=True)
    return out


def main() -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = Path(os.environ.get("OUT", "/tmp"))
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "fizzbot-gpu-check"
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__}
    import transformers

    report["transformers"] = transformers.__version__
    parts = [("kernels", lambda: check_kernels(device)), ("engine", lambda: check_engine(device, work))]
    if device.type == "cuda" and not os.environ.get("FIZZBOT_CHECK_QUICK"):
        parts.append(("throughput", lambda: engine_throughput(device, work)))
    for name, part in parts:
        try:
            report[name] = part()
        except Exception as exc:  # noqa: BLE001 - recorded; the next part still runs
            traceback.print_exc()
            report[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        print(name, json.dumps(report[name], indent=1), flush=True)
        (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
