#!/usr/bin/env python
"""Many adapters on one base, and prefix reuse: the engine in-process against the merged single adapter.

    python benchmarks/gpu_adapters.py            # GPU: Qwen2.5-0.5B shape, CUDA graphs
    python benchmarks/gpu_adapters.py --cpu      # the demo model's shape on the CPU

One run:
1. a base with random weights (GPU: Qwen2.5-0.5B shape, bf16; CPU: the demo model's shape, fp32) and
   `--adapters` LoRA adapters of it (r=16 on every linear layer, random A and B, 64 speakers each);
2. merged: adapter 0 merged into the base (what `serve.model_dir` serves), `--rows` requests at once,
   one turn of `--tokens` tokens each, sampling, eos_stop off; measured after a warm-up run; every
   measurement below is repeated `--repeats` times, interleaved, and the best kept;
3. shared: the same base unmerged with every adapter loaded (what `serve.adapters` serves), the same
   requests spread round-robin over the first 1, 4 and 16 adapters: output tokens/s, and the ratio
   to merged (issue goal: 16 adapters at most 30 % slower);
4. prefix reuse (merged engine): `--rows` requests that share a channel history of `--history`
   tokens (a new one each repeat) and differ in their last message, each answering 8 tokens; first
   with nothing cached, then again with the history's blocks cached: wall time and mean time to
   first token.
Writes $OUT/gpu_adapters.json (or --json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def make_adapters(work: Path, count: int, cpu: bool) -> tuple[list[Path], list[str]]:
    from safetensors.torch import load_file, save_file

    from gpu_serve import gpu_checkpoint

    first, prompts = gpu_checkpoint(work, cpu=cpu)
    state = load_file(str(first / "adapter_model.safetensors"))
    folders = [first]
    for i in range(1, count):
        folder = work / f"adapter-{i}"
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(first, folder)
        generator = torch.Generator().manual_seed(i)
        fresh = {k: (torch.randn(v.shape, generator=generator) * (0.01 if "lora_B" in k else 0.05)).to(v.dtype) if "lora_" in k else v
                 for k, v in state.items()}
        save_file(fresh, str(folder / "adapter_model.safetensors"))
        folders.append(folder)
    return folders, prompts


def run(engine, prompts: list[str], tokens: int, adapters: list[str | None], seed: int) -> dict:
    from fizzbot.infer.engine import Request, SamplingParams

    requests = [Request(p, SamplingParams(max_new_tokens=tokens, turns=1, temperature=0.8, top_p=0.95, eos_stop=False, seed=seed + i),
                        adapter=adapters[i % len(adapters)]) for i, p in enumerate(prompts)]
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    results = engine.generate(requests)
    sync()
    seconds = time.perf_counter() - start
    made = sum(r.completion_tokens for r in results)
    first = [r.first_token_s for r in results if r.first_token_s is not None]
    return {"tokens_per_s": made / seconds, "seconds": seconds, "tokens": made, "mean_first_token_s": sum(first) / len(first),
            "cached_tokens": sum(r.cached_tokens for r in results)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--rows", type=int, help="requests at once (GPU 64, CPU 16)")
    parser.add_argument("--tokens", type=int, help="tokens per request (GPU 128, CPU 32)")
    parser.add_argument("--adapters", default="1,4,16")
    parser.add_argument("--history", type=int, help="shared history tokens for the prefix runs (GPU 1000, CPU 400)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best of each is kept (default 3)")
    parser.add_argument("--work-dir")
    parser.add_argument("--json", default=os.path.join(os.environ.get("OUT", tempfile.gettempdir()), "gpu_adapters.json"))
    args = parser.parse_args()
    rows = args.rows or (16 if args.cpu else 64)
    tokens = args.tokens or (32 if args.cpu else 128)
    history = args.history or (400 if args.cpu else 1000)
    counts = [int(x) for x in args.adapters.split(",")]
    device = "cpu" if args.cpu else "cuda"
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fizzbot-adapters-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    from fizzbot.infer.engine import engine_from_checkpoint
    from fizzbot.infer.lora import engine_from_adapters

    t0 = time.perf_counter()
    folders, prompts = make_adapters(work, max(counts), args.cpu)
    log(f"{len(folders)} adapters in {time.perf_counter() - t0:.0f}s")
    prompts = [prompts[i % len(prompts)][-600:] for i in range(rows)]
    report: dict = {"benchmark": "adapters_and_prefix", "device": device, "rows": rows, "tokens": tokens, "history": history}
    common = dict(device=device, max_batch_size=rows, max_prompt_tokens=max(512, history + 64), compile=not args.cpu, max_cache_len=history + 256)

    merged = engine_from_checkpoint(folders[0], **common)
    shared = engine_from_adapters({f"a{i}": f for i, f in enumerate(folders)}, max_adapters=len(folders), **common)
    run(merged, prompts, 8, [None], 0)  # warm-up
    run(shared, prompts, 8, [f"a{i}" for i in range(max(counts))], 0)
    # Interleaved repeats, the best of each kept: a busy machine slows runs, never speeds them up.
    best: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for key, engine, adapters in [("merged", merged, [None])] + [(f"adapters_{n}", shared, [f"a{i}" for i in range(n)]) for n in counts]:
            result = run(engine, prompts, tokens, adapters, 100)
            if key not in best or result["tokens_per_s"] > best[key]["tokens_per_s"]:
                best[key] = result
        # Prefix reuse: a chat bridge resends the channel's history with every request. A new history
        # each repeat: the first pass finds nothing cached, the second finds the history's blocks.
        rng = random.Random(repeat)
        lines, size = [], 0
        while size < history:
            line = f"<S{rng.randrange(64)}> " + " ".join(f"w{rng.randrange(999)}" for _ in range(rng.randint(4, 14))) + " <EOT>\n"
            lines.append(line)
            size += len(merged.tokenizer(line, add_special_tokens=False)["input_ids"])
        asks = ["".join(lines) + f"<S{i % 64}> question number {i} about w{i} <EOT>\n" for i in range(rows)]
        for key in ("prefix_cold", "prefix_warm"):
            result = run(merged, asks, 8, [None], 200)
            if key not in best or result["seconds"] < best[key]["seconds"]:
                best[key] = result
    for n in counts:
        best[f"adapters_{n}"]["vs_merged"] = best[f"adapters_{n}"]["tokens_per_s"] / best["merged"]["tokens_per_s"]
    report.update(best)
    log(json.dumps(best))
    Path(args.json).write_text(json.dumps(report, indent=2))
    print()
    print(f"{'run':<24} {'tokens/s':>10} {'vs merged':>10} {'mean TTFT s':>12} {'cached tokens':>14}")
    for key in ["merged"] + [f"adapters_{n}" for n in counts] + ["prefix_cold", "prefix_warm"]:
        r = report[key]
        print(f"{key:<24} {r['tokens_per_s']:>10,.0f} {r.get('vs_merged', float('nan')):>10.2f} {r['mean_first_token_s']:>12.4f} {r['cached_tokens']:>14}")
    cold, warm = report["prefix_cold"], report["prefix_warm"]
    print(f"prefix reuse: wall {cold['seconds']:.3f}s -> {warm['seconds']:.3f}s ({cold['seconds'] / warm['seconds']:.2f}x), "
          f"mean time to first token {cold['mean_first_token_s']:.4f}s -> {warm['mean_first_token_s']:.4f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
