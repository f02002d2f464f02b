#!/usr/bin/env python
"""Serving throughput on CPU: the Ray Serve endpoint under 16 concurrent clients, against one-at-a-time generation.

    .venv/bin/python benchmarks/serve_throughput.py                               # trains a demo model first
    .venv/bin/python benchmarks/serve_throughput.py --model-dir runs/demo/<stamp>/checkpoint-300 --json /tmp/serve.json
    .venv/bin/python benchmarks/serve_throughput.py --train-steps 30 --requests 16 # a quick check

One run, one model, the same requests on every side:
  * the model: `--model-dir` (a fizzbot checkpoint), else a demo model trained here first: the demo
    corpus prepared without Ray, `fizzbot.train.trainer.train(cfg, use_ray=False)` with
    configs/demo.yaml's model shape for `--train-steps` (default 150) steps;
  * the requests: `--requests` (default 64) contexts of 3-8 demo messages from the prepared
    val.jsonl (raw text with speaker tokens), each with max_new_tokens 48 (per turn), `--turns`
    turns (default 4: several messages per request, so that requests are of comparable size),
    temperature 0.8, top_p 0.95, top_k 0, repetition_penalty 1.1, eos_stop false, seed 1000+i;
  * 1. fizzbot's engine, one request at a time (`GenerationEngine.generate([one])` in this process,
       on the model `load_for_inference` loads);
    2. plain Hugging Face `model.generate()`, one request at a time, same model object, same prompt
       ids, same sampling settings, and exactly as many new tokens as the engine generated for that
       request (min_new_tokens = max_new_tokens), so both do the same work per request;
    3. the Serve application (`fizzbot.serve.app.run_server`) on a local Ray (num_cpus=2), one
       replica with max_concurrent_requests 16, `--clients` (default 16) HTTP client threads, each
       with its own requests.Session, pulling the next request from the shared list: POST
       /v1/generate; tokens counted from `usage.completion_tokens`.
Rates are generated tokens per second of wall time (all requests); latency is per request (p50, p95;
for Serve, from sending the request to the whole response, queueing included). Goal: Serve >= 4x
the plain one-at-a-time rate.

Threads: Ray sets OMP_NUM_THREADS to floor(num_cpus) of an actor unless the variable is already
set, so the replica's torch uses floor(serve.num_cpus) threads (1 with fizzbot's default
serve.num_cpus=1). Here the replica gets `--replica-cpus` (default 2, the whole 2-CPU Ray), hence 2
threads; `--torch-threads N` instead exports OMP_NUM_THREADS=N before Ray starts (its workers
inherit it). A probe actor with the replica's num_cpus reports the thread count it sees; the
one-at-a-time sides use the same count (all printed with the table). The one-at-a-time sides run
before Ray starts; during the Serve side the HTTP clients and Serve's proxy share the machine with
the replica. On a 2-core machine that is busy with anything else, 2 torch threads can be many times
slower than 1 (OpenMP threads wait on each other): compare `--replica-cpus 1` there.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import queue
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MAX_NEW_TOKENS = 48
SAMPLING = {"temperature": 0.8, "top_p": 0.95, "top_k": 0, "repetition_penalty": 1.1}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass
class Side:
    name: str
    what: str
    wall_s: float = 0.0
    tokens: list[int] = field(default_factory=list)  # per request, in request order
    latencies: list[float] = field(default_factory=list)
    threads: int | None = None

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens)

    @property
    def rate(self) -> float:
        return self.total_tokens / max(self.wall_s, 1e-9)

    def percentile(self, q: float) -> float:
        import numpy as np

        return float(np.percentile(self.latencies, q)) if self.latencies else math.nan


# --- the model and the requests ------------------------------------------------------------------------


def prepare_demo(work: Path, days: int) -> Path:
    from fizzbot.config import load_config
    from fizzbot.data.demo import write_demo_corpus
    from fizzbot.data.pipeline import prepare

    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"data.inputs=[{work / 'corpus'}]", f"data.output={work / 'prepared'}", f"data.path={work / 'prepared'}",
    ])
    write_demo_corpus(work / "corpus", seed=0, days=days)
    prepare(cfg.data, use_ray=False, report=False)
    return work / "prepared"


def train_demo_model(work: Path, prepared: Path, steps: int, threads: int) -> tuple[Path, float]:
    from fizzbot.config import load_config
    from fizzbot.train.trainer import train

    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"data.path={prepared}", f"run.dir={work / 'runs'}", "run.name=bench",
        "training.num_workers=1", f"training.threads_per_worker={threads}", f"training.max_steps={steps}",
        f"training.warmup_steps={min(20, max(1, steps // 5))}", f"training.eval_steps={steps}", f"training.save_steps={steps}",
        f"training.log_steps={max(1, min(25, steps))}",
    ])
    t0 = time.perf_counter()
    result = train(cfg, use_ray=False)
    seconds = time.perf_counter() - t0
    if result.best_checkpoint is None:
        sys.exit("training wrote no checkpoint")
    return result.best_checkpoint, seconds


def load_requests(prepared: Path, n: int, turns: int) -> list[dict]:
    """n contexts of 3+ messages from val.jsonl, spread over the file; one /v1/generate body each."""
    rows = [json.loads(line) for line in (prepared / "val.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    usable = [r["context"] for r in rows if r.get("context", "").count("<EOT>") >= 3]
    if not usable:
        sys.exit(f"no val.jsonl context with 3 or more messages in {prepared}")
    stride = max(1, len(usable) // n)
    picked = [usable[(i * stride) % len(usable)] for i in range(n)]
    return [
        {"context": ctx, "max_new_tokens": MAX_NEW_TOKENS, "turns": turns, "eos_stop": False, "seed": 1000 + i, **SAMPLING}
        for i, ctx in enumerate(picked)
    ]


def sampling_params(body: dict):
    from fizzbot.infer.engine import SamplingParams

    return SamplingParams(
        max_new_tokens=body["max_new_tokens"], temperature=body["temperature"], top_p=body["top_p"], top_k=body["top_k"],
        repetition_penalty=body["repetition_penalty"], turns=body["turns"], eos_stop=body["eos_stop"], seed=body["seed"],
    )


# --- one request at a time ------------------------------------------------------------------------------


def run_engine_sequential(engine, bodies: list[dict], warmup: int) -> Side:
    import torch

    from fizzbot.infer.engine import Request

    side = Side("engine_1x1", "fizzbot GenerationEngine, one request at a time", threads=torch.get_num_threads())
    for body in bodies[:warmup]:
        engine.generate([Request(body["context"], sampling_params(body))])
    start = time.perf_counter()
    for body in bodies:
        t0 = time.perf_counter()
        (result,) = engine.generate([Request(body["context"], sampling_params(body))])
        side.latencies.append(time.perf_counter() - t0)
        side.tokens.append(result.completion_tokens)
    side.wall_s = time.perf_counter() - start
    return side


def run_hf_sequential(model, engine, bodies: list[dict], counts: list[int], warmup: int) -> Side:
    """model.generate() on one prompt at a time: same prompt ids, same sampling, same number of new tokens."""
    import torch

    side = Side("hf_generate_1x1", "HF model.generate(), one request at a time", threads=torch.get_num_threads())
    tok = engine.tokenizer

    def one(body: dict, n: int) -> int:
        ids, _ = engine.encode(body["context"])  # the engine's own prompt: BOS + ids, trimmed the same way
        input_ids = torch.tensor([ids], dtype=torch.long)
        torch.manual_seed(body["seed"])
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True,
                temperature=body["temperature"], top_p=body["top_p"], top_k=0, repetition_penalty=body["repetition_penalty"],
                max_new_tokens=n, min_new_tokens=n, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            )
        return out.shape[1] - input_ids.shape[1]

    for body, n in list(zip(bodies, counts))[:warmup]:
        one(body, n)
    start = time.perf_counter()
    for body, n in zip(bodies, counts):
        t0 = time.perf_counter()
        side.tokens.append(one(body, n))
        side.latencies.append(time.perf_counter() - t0)
    side.wall_s = time.perf_counter() - start
    return side


# --- the Serve endpoint ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe_threads(num_cpus: float) -> tuple[int, str | None]:
    """torch threads in a Ray actor with this num_cpus (a Serve replica is such an actor)."""
    import ray

    @ray.remote(num_cpus=num_cpus)
    class Probe:
        def threads(self):
            import torch

            return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")

    probe = Probe.remote()
    try:
        return ray.get(probe.threads.remote(), timeout=120)
    finally:
        ray.kill(probe)


def post_all(url: str, bodies: list[dict], clients: int, side: Side) -> None:
    """`clients` threads, one requests.Session each, pulling bodies from a shared queue."""
    import requests

    todo: queue.Queue = queue.Queue()
    for i, body in enumerate(bodies):
        todo.put((i, body))
    tokens = [0] * len(bodies)
    latencies = [0.0] * len(bodies)
    errors: list[str] = []

    def client() -> None:
        with requests.Session() as session:
            while True:
                try:
                    i, body = todo.get_nowait()
                except queue.Empty:
                    return
                t0 = time.perf_counter()
                try:
                    response = session.post(f"{url}/v1/generate", json=body, timeout=900)
                    latencies[i] = time.perf_counter() - t0
                    if response.status_code != 200:
                        errors.append(f"request {i}: HTTP {response.status_code} {response.text[:200]}")
                        continue
                    tokens[i] = response.json()["usage"]["completion_tokens"]
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(f"request {i}: {exc}")

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    side.wall_s = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[:3]}")
    side.tokens, side.latencies = tokens, latencies


def run_serve(model_dir: Path, bodies: list[dict], args) -> tuple[Side, dict]:
    import ray
    from ray import serve

    from fizzbot.config import load_config
    from fizzbot.pipeline import wait_healthy
    from fizzbot.serve.app import run_server

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        threads, omp = probe_threads(args.replica_cpus)
        log(f"a Ray actor with num_cpus={args.replica_cpus:g} sees torch threads {threads} (OMP_NUM_THREADS={omp})")
        port = free_port()
        cfg = load_config(None, [
            f"serve.model_dir={model_dir}", f"serve.port={port}", "generate.device=cpu",
            f"serve.num_cpus={args.replica_cpus}", f"serve.max_concurrent_requests={args.max_concurrent}",
            "serve.max_queued_requests=256", f"serve.max_turns={max(8, args.turns)}", f"serve.max_new_tokens={max(256, MAX_NEW_TOKENS)}",
        ])
        t0 = time.perf_counter()
        url = run_server(cfg, name="bench")
        wait_healthy(url, timeout_s=600)
        log(f"Serve up in {time.perf_counter() - t0:.1f}s at {url} (replica num_cpus={args.replica_cpus:g}, "
            f"max_concurrent_requests={args.max_concurrent})")
        warm = Side("warmup", "")
        post_all(url, [{**b, "seed": 1} for b in bodies[: min(len(bodies), 4)]], min(4, args.clients), warm)
        side = Side("serve_concurrent", f"Ray Serve /v1/generate, {args.clients} concurrent HTTP clients", threads=threads)
        post_all(url, bodies, args.clients, side)
        serve.shutdown()
        return side, {"probe_threads": threads, "probe_omp_num_threads": omp}
    finally:
        ray.shutdown()


# --- main --------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", help="a fizzbot checkpoint to serve (default: train a demo model first)")
    parser.add_argument("--train-steps", type=int, default=150, help="steps of the demo model (default 150)")
    parser.add_argument("--requests", type=int, default=64, help="requests on every side (default 64)")
    parser.add_argument("--turns", type=int, default=4, help="turns per request (default 4)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients (default 16)")
    parser.add_argument("--max-concurrent", type=int, default=16, help="serve.max_concurrent_requests (default 16)")
    parser.add_argument("--replica-cpus", type=float, default=2.0, help="serve.num_cpus of the replica (default 2)")
    parser.add_argument("--torch-threads", type=int, help="export OMP_NUM_THREADS=N for Ray's workers (default: Ray's floor(num_cpus))")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured requests before each one-at-a-time side")
    parser.add_argument("--days", type=int, default=28, help="days of demo chat (default 28)")
    parser.add_argument("--work-dir", help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--json", help="write the numbers to this JSON file")
    args = parser.parse_args()

    import torch

    # What the replica's torch will use (Ray: OMP_NUM_THREADS = floor(num_cpus) unless already set); the probe checks it.
    if args.torch_threads:
        os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)  # before ray.init: Ray's workers inherit it
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, math.floor(args.replica_cpus)))
    torch.set_num_threads(threads)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="fizzbot-serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    info: dict = {}
    try:
        prepared = prepare_demo(work, args.days)
        if args.model_dir:
            model_dir = Path(args.model_dir).resolve()
        else:
            model_dir, seconds = train_demo_model(work, prepared, args.train_steps, threads)
            info["train_seconds"] = seconds
            log(f"trained the demo model ({args.train_steps} steps, no Ray, {threads} threads) in {seconds:.0f}s: {model_dir}")
        torch.set_num_threads(threads)
        bodies = load_requests(prepared, args.requests, args.turns)

        from fizzbot.artifacts.loading import load_for_inference
        from fizzbot.infer.engine import GenerationEngine

        model, tokenizer, speaker_map = load_for_inference(model_dir, device=torch.device("cpu"))
        engine = GenerationEngine(model, tokenizer, speaker_map, max_prompt_tokens=1024, max_batch_size=args.max_concurrent)
        prompt_lens = [len(engine.encode(b["context"])[0]) for b in bodies]
        info["prompt_tokens_mean"] = sum(prompt_lens) / len(prompt_lens)
        log(f"{len(bodies)} requests, prompts {min(prompt_lens)}-{max(prompt_lens)} tokens (mean {info['prompt_tokens_mean']:.0f})")

        engine_side = run_engine_sequential(engine, bodies, args.warmup)
        log(f"engine one at a time: {engine_side.rate:.1f} tok/s, {engine_side.total_tokens} tokens in {engine_side.wall_s:.1f}s")
        hf_side = run_hf_sequential(model, engine, bodies, engine_side.tokens, args.warmup)
        log(f"HF generate one at a time: {hf_side.rate:.1f} tok/s, {hf_side.total_tokens} tokens in {hf_side.wall_s:.1f}s")
        sides = [hf_side, engine_side]
        del engine, model

        serve_side, probe = run_serve(model_dir, bodies, args)
        info.update(probe)
        log(f"Serve, {args.clients} clients: {serve_side.rate:.1f} tok/s, {serve_side.total_tokens} tokens in {serve_side.wall_s:.1f}s")
        sides.append(serve_side)
        report(args, sides, info, threads, model_dir)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def report(args, sides: list[Side], info: dict, threads: int, model_dir: Path) -> None:
    base = sides[0]
    import numpy as np

    print()
    print(f"Serving throughput, CPU, demo model ({model_dir}), {args.requests} requests: {args.turns} turn(s), "
          f"max_new_tokens {MAX_NEW_TOKENS} per turn, eos_stop false, fixed seeds; prompts {info['prompt_tokens_mean']:.0f} tokens on average")
    if "train_seconds" in info:
        print(f"(demo model trained here for {args.train_steps} steps in {info['train_seconds']:.0f}s)")
    header = f"{'side':<18} {'tokens':>7} {'tok/req':>8} {'wall s':>8} {'tok/s':>8} {'p50 s':>7} {'p95 s':>7} {'threads':>7} {'vs HF':>7}  what"
    print(header)
    print("-" * len(header) + "-" * 40)
    for s in sides:
        print(f"{s.name:<18} {s.total_tokens:>7} {np.mean(s.tokens):>8.1f} {s.wall_s:>8.1f} {s.rate:>8.1f} {s.percentile(50):>7.2f} "
              f"{s.percentile(95):>7.2f} {s.threads if s.threads is not None else '?':>7} {s.rate / base.rate:>6.2f}x  {s.what}")
    serve_side = sides[-1]
    ratio = serve_side.rate / base.rate
    print()
    print(f"Serve ({args.clients} clients) / HF generate one at a time: {ratio:.2f}x generated tokens per second "
          f"(goal >= 4x: {'met' if ratio >= 4 else 'NOT met'}); vs fizzbot's engine one at a time: {serve_side.rate / sides[1].rate:.2f}x")
    if info.get("probe_threads") is not None and info["probe_threads"] != threads:
        print(f"WARNING: the replica's torch threads ({info['probe_threads']}) differ from the one-at-a-time sides' ({threads})")
    print(f"torch threads: one-at-a-time sides {threads}; Serve replica {info.get('probe_threads')} "
          f"(probe actor, num_cpus={args.replica_cpus:g}, OMP_NUM_THREADS={info.get('probe_omp_num_threads')})")
    if args.json:
        out = {
            "benchmark": "serve_throughput",
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "model_dir": str(model_dir),
            "max_new_tokens": MAX_NEW_TOKENS,
            "sampling": SAMPLING,
            "info": info,
            "results": {
                s.name: {
                    "tokens": s.total_tokens, "wall_s": s.wall_s, "tokens_per_s": s.rate, "p50_s": s.percentile(50),
                    "p95_s": s.percentile(95), "threads": s.threads, "vs_hf": s.rate / base.rate, "per_request_tokens": s.tokens,
                }
                for s in sides
            },
            "ratio_serve_vs_hf": ratio,
            "ratio_serve_vs_engine_1x1": serve_side.rate / sides[1].rate,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
