"""GPU generation throughput: fizzbot's engine against transformers' `generate`, in one run.

    python benchmarks/gpu_generate.py [--json out.json]

The model shape of docs/ANCHORS.md (Qwen2.5-0.5B: 24 layers, hidden 896, vocabulary 151,936, random
bf16 weights), a 256-token prompt, 128 new tokens, sampling (temperature 0.8, top-p 0.9). Measured:

  hf_generate_1        plain `model.generate`, one request at a time (the original tool's path)
  hf_static_bs16       `generate` with cache_implementation="static" (compiled), a batch of 16, greedy
  engine_eager_1       fizzbot's engine, paged KV cache, eager: one request
  engine_graph_1       fizzbot's engine, paged KV cache, decode step replayed as CUDA graphs: one request
  engine_graph_32      the same engine, 32 requests submitted at once (continuous batching)
(The serving figures over HTTP come from benchmarks/gpu_serve.py.)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import torch

NEW_TOKENS = 128
PROMPT_TOKENS = 256


def build(folder: Path):
    """The random Qwen-shaped model and a small tokenizer with 64 speaker tokens and <EOT>."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_train import save_model
    from transformers import AutoModelForCausalLM

    from fizzbot.chat.speakers import SpeakerMap
    from fizzbot.model.tokenizer import add_chat_tokens, train_tiny_tokenizer

    save_model(folder)
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    texts = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(4000)]
    tokenizer = train_tiny_tokenizer(texts, 2000)
    speakers = SpeakerMap.from_json({f"<S{i}>": f"user{i}" for i in range(64)})
    add_chat_tokens(tokenizer, speakers.tokens)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to("cuda").eval()
    lines, size = [], 0
    while size < PROMPT_TOKENS - 20:
        line = f"<S{rng.randrange(64)}> " + " ".join(rng.choice(words) for _ in range(rng.randint(4, 16))) + " <EOT>\n"
        lines.append(line)
        size += len(tokenizer(line, add_special_tokens=False)["input_ids"])
    return model, tokenizer, speakers, "".join(lines)


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - start


def hf_runs(model, tokenizer, prompt: str, results: dict) -> None:
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"][:PROMPT_TOKENS]], device="cuda")
    sampling = dict(do_sample=True, temperature=0.8, top_p=0.9, pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids[:, :32], max_new_tokens=8, **sampling)
        n = 64
        _, seconds = timed(lambda: model.generate(ids, max_new_tokens=n, min_new_tokens=n, **sampling))
        results["hf_generate_1"] = {"tokens_per_s": round(n / seconds, 1), "ms_per_token": round(1000 * seconds / n, 1)}
        print("hf_generate_1", results["hf_generate_1"], flush=True)
        batch = ids.repeat(16, 1)
        greedy = dict(do_sample=False, pad_token_id=0, cache_implementation="static", max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
        timed(lambda: model.generate(batch, **greedy))  # compiles
        _, seconds = timed(lambda: model.generate(batch, **greedy))
        results["hf_static_bs16"] = {"tokens_per_s": round(16 * NEW_TOKENS / seconds), "seconds": round(seconds, 2)}
        print("hf_static_bs16", results["hf_static_bs16"], flush=True)


def engine_runs(model, tokenizer, speakers, prompt: str, results: dict, concurrent: int, eager_too: bool = True) -> None:
    from fizzbot.infer.engine import GenerationEngine, Request, SamplingParams

    def params(seed: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.8, top_p=0.9, repetition_penalty=1.0,
                              turns=1, eos_stop=False, seed=seed)

    def run(engine, n: int, seed: int) -> tuple[int, float, list[float]]:
        requests = [Request(prompt, params(seed + i)) for i in range(n)]
        results_, seconds = timed(lambda: engine.generate(requests))
        return sum(r.completion_tokens for r in results_), seconds, [r.seconds for r in results_]

    eager = GenerationEngine(model, tokenizer, speakers, max_prompt_tokens=512, max_batch_size=concurrent)
    run(eager, 1, 0)
    tokens, seconds, _ = run(eager, 1, 1)
    results["engine_eager_1"] = {"tokens_per_s": round(tokens / seconds, 1), "ms_per_token": round(1000 * seconds / tokens, 2)}
    print("engine_eager_1", results["engine_eager_1"], flush=True)
    if eager_too:
        tokens, seconds, lat = run(eager, concurrent, 100)
        results[f"engine_eager_{concurrent}"] = {"tokens_per_s": round(tokens / seconds), "seconds": round(seconds, 2)}
        print(f"engine_eager_{concurrent}", results[f"engine_eager_{concurrent}"], flush=True)
    del eager

    started = time.perf_counter()
    graph = GenerationEngine(model, tokenizer, speakers, max_prompt_tokens=512, max_batch_size=concurrent, graphs=True, max_cache_len=1536)
    results["graph_capture_s"] = round(time.perf_counter() - started, 1)
    results["graph_error"] = graph.runner.capture_error
    run(graph, concurrent, 200)
    tokens, seconds, _ = run(graph, 1, 2)
    results["engine_graph_1"] = {"tokens_per_s": round(tokens / seconds, 1), "ms_per_token": round(1000 * seconds / tokens, 2)}
    print("engine_graph_1", results["engine_graph_1"], flush=True)
    tokens, seconds, lat = run(graph, concurrent, 300)
    lat.sort()
    results[f"engine_graph_{concurrent}"] = {
        "tokens_per_s": round(tokens / seconds), "seconds": round(seconds, 2),
        "p50_s": round(lat[len(lat) // 2], 2), "p95_s": round(lat[int(len(lat) * 0.95) - 1], 2),
    }
    print(f"engine_graph_{concurrent}", results[f"engine_graph_{concurrent}"], flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=32)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--skip-eager", action="store_true")
    parser.add_argument("--json", default=os.path.join(os.environ.get("OUT", "/tmp"), "gpu_generate.json"))
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = True
    model, tokenizer, speakers, prompt = build(Path("/tmp/fizzbot-qwen05-random"))
    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    steps = [("engine", lambda: engine_runs(model, tokenizer, speakers, prompt, results, args.concurrent, not args.skip_eager))]
    if not args.skip_hf:
        steps.insert(0, ("hf", lambda: hf_runs(model, tokenizer, prompt, results)))
    for name, step in steps:
        try:
            step()
        except Exception as exc:
            import traceback

            traceback.print_exc()
            results[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:800]
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
