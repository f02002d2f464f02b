#!/usr/bin/env python
"""Serving over HTTP: the real `fizzbot serve` under 1 to 256 concurrent clients, streamed and not.

    python benchmarks/gpu_serve.py                    # GPU: Qwen2.5-0.5B shape, one table
    python benchmarks/gpu_serve.py --cpu              # the CPU twin: the demo model, 1 and 16 clients
    python benchmarks/gpu_serve.py --loads 1,64 --modes plain --json out.json

One run, in this order:
1. the checkpoint: GPU, a LoRA adapter (r=16, all linear layers, non-zero B) on a random bf16
   Qwen2.5-0.5B-shaped base with the demo tokenizer and 64 speakers: near-random weights, so turns
   run to their token limit; CPU, the demo model trained here (`--train-steps`) or `--model-dir`;
2. the baseline, in this process, on the same device before the server starts: GPU, transformers'
   static-cache compiled `generate` on a batch of 16 (greedy, 128 new tokens); CPU, plain
   `model.generate` one request at a time (sampling, the requests' token budget);
3. `python -m fizzbot.cli serve` in a subprocess (its own local Ray), `generate.compile=true` and
   `serve.num_gpus=1` on GPU; then for each load (concurrent clients, each sending its next request as
   soon as the last is answered; `--waves` requests per client) and mode (`plain`: whole answers,
   `stream`: server-sent events), POST /v1/completions: a 256-token-ish channel context, `--turns`
   turns of up to `--max-tokens` tokens, sampling (temperature 0.8, top-p 0.95), eos_stop false,
   a seed per request.
Reported per load and mode: output tokens/s (completion tokens of all requests over the wall time),
time to first token (streams: to the first event with text) and time per output token (streams:
(last event - first event) / (tokens - 1)), p50 and p99, and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- checkpoints ----------------------------------------------------------------------------------------


DEMO_SHAPE = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                  vocab_size=2048, max_position_embeddings=2048, tie_word_embeddings=True)


def gpu_checkpoint(work: Path, speakers: int = 64, seed: int = 0, cpu: bool = False) -> tuple[Path, list[str]]:
    """A LoRA checkpoint on a random base (Qwen2.5-0.5B shape; `cpu`: the demo model's shape, fp32),
    with chat-channel prompts."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    from fizzbot.chat.speakers import SpeakerMap
    from fizzbot.model.tokenizer import add_chat_tokens, train_tiny_tokenizer
    from gpu_train import save_model

    base = work / ("base-demo" if cpu else "base")
    if not cpu:
        base = save_model("qwen0.5b", "cuda")  # the Qwen2.5-0.5B shape of gpu_train.py, random bf16 weights
    elif not (base / "config.json").exists():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(LlamaConfig(**DEMO_SHAPE)).save_pretrained(base)
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    tokenizer = train_tiny_tokenizer([" ".join(rng.choice(words) for _ in range(12)) for _ in range(4000)], 2000)
    smap = SpeakerMap.from_json({f"<S{i}>": f"user{i}" for i in range(speakers)})
    add_chat_tokens(tokenizer, smap.tokens)
    ckpt = work / f"adapter-{seed}"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32 if cpu else torch.bfloat16)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.01)  # peft starts B at zero: a trained adapter's B is not
    model.save_pretrained(ckpt)
    config = json.loads((ckpt / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base)
    (ckpt / "adapter_config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(ckpt)
    smap.save(ckpt / "speaker_map.json")
    prompts = []
    for _ in range(64):
        lines, size = [], 0
        while size < 230:
            line = f"<S{rng.randrange(speakers)}> " + " ".join(rng.choice(words) for _ in range(rng.randint(4, 16))) + " <EOT>\n"
            lines.append(line)
            size += len(tokenizer(line, add_special_tokens=False)["input_ids"])
        prompts.append("".join(lines))
    return ckpt, prompts


def cpu_checkpoint(work: Path, steps: int, model_dir: str | None) -> tuple[Path, list[str]]:
    from serve_throughput import load_requests, prepare_demo, train_demo_model

    prepared = prepare_demo(work, days=28)
    ckpt = Path(model_dir) if model_dir else train_demo_model(work, prepared, steps, threads=2)[0]
    return ckpt, [b["context"] for b in load_requests(prepared, 64, 1)]


# --- baselines ------------------------------------------------------------------------------------------


def hf_static_baseline(ckpt: Path, prompts: list[str], new_tokens: int = 128, batch: int = 16) -> dict:
    """transformers' static-cache compiled generate, greedy, a batch of 16 (the in-process reference)."""
    import torch

    from fizzbot.artifacts.loading import load_for_inference

    model, tokenizer, _ = load_for_inference(ckpt, device=torch.device("cuda"))
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"][-200:] for p in prompts[:batch]]
    width = min(len(i) for i in ids)
    batch_ids = torch.tensor([i[-width:] for i in ids], device="cuda")
    kwargs = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id, cache_implementation="static", max_new_tokens=new_tokens,
                  min_new_tokens=new_tokens)
    with torch.inference_mode():
        model.generate(batch_ids, **kwargs)  # compiles
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(batch_ids, **kwargs)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    del model
    torch.cuda.empty_cache()
    return {"name": f"transformers static-cache generate, batch {batch} (in-process)", "tokens_per_s": batch * new_tokens / seconds}


def hf_sequential_baseline(ckpt: Path, prompts: list[str], max_tokens: int, count: int = 8) -> dict:
    import torch

    from fizzbot.artifacts.loading import load_for_inference

    model, tokenizer, _ = load_for_inference(ckpt, device=torch.device("cpu"))
    tokens, start = 0, time.perf_counter()
    with torch.inference_mode():
        for i, p in enumerate(prompts[:count]):
            ids = torch.tensor([tokenizer(p, add_special_tokens=False)["input_ids"]])
            torch.manual_seed(i)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.8, top_p=0.95,
                                 max_new_tokens=max_tokens, min_new_tokens=max_tokens, pad_token_id=tokenizer.pad_token_id)
            tokens += out.shape[1] - ids.shape[1]
    return {"name": "transformers generate, one request at a time (in-process)", "tokens_per_s": tokens / (time.perf_counter() - start)}


# --- the server and its clients ---------------------------------------------------------------------------


def start_server(ckpt: Path, port: int, overrides: list[str], log_path: Path, extra_env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}", **(extra_env or {})}
    if os.path.exists("/tmp/ray/ray_current_cluster"):
        env["RAY_ADDRESS"] = "local"  # never join a cluster someone else started on this machine
    cmd = [sys.executable, "-m", "fizzbot.cli", "serve", f"serve.model_dir={ckpt}", f"serve.port={port}", *overrides]
    log(" ".join(cmd[2:]))
    return subprocess.Popen(cmd, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def cpu_by_process(server: subprocess.Popen) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this process (the clients) and of every process under the server."""
    import psutil

    def label(p: psutil.Process) -> str:
        text = " ".join(p.cmdline()[:3]) or p.name()
        for key in ("ServeReplica", "ProxyActor", "ServeController", "raylet", "gcs_server", "dashboard", "runtime_env", "log_monitor"):
            if key in text:
                return key
        return "serve CLI (driver)" if p.pid == server.pid else "other Ray processes"

    found = {}
    me = psutil.Process()
    for p in [me] + psutil.Process(server.pid).children(recursive=True) + [psutil.Process(server.pid)]:
        try:
            t = p.cpu_times()
            found[p.pid] = ("HTTP clients (benchmark)" if p.pid == me.pid else label(p), t.user + t.system)
        except psutil.Error:
            pass
    return found


def cores_used(before: dict, after: dict, wall: float) -> dict[str, float]:
    used: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        used[name] = used.get(name, 0.0) + (seconds - before.get(pid, (name, 0.0))[1]) / wall
    return {k: round(v, 2) for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v >= 0.005}


async def one_request(session, url: str, body: dict, stream: bool) -> dict:
    start = time.perf_counter()
    async with session.post(url + "/v1/completions", json={**body, "stream": stream}) as response:
        if response.status != 200:
            return {"error": f"HTTP {response.status}: {(await response.text())[:200]}"}
        if not stream:
            data = await response.json()
            return {"tokens": data["usage"]["completion_tokens"], "latency": time.perf_counter() - start}
        first = last = None
        tokens, events = 0, 0
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"error": chunk["error"]["message"]}
            events += 1
            now = time.perf_counter()
            if chunk["choices"][0].get("text"):
                first = first or now
                last = now
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
        out = {"tokens": tokens, "latency": time.perf_counter() - start, "events": events}
        if first is not None:
            out["ttft"] = first - start
            if tokens > 1:
                out["tpot"] = (last - first) / (tokens - 1)
        return out


async def drive(url: str, prompts: list[str], clients: int, waves: int, stream: bool, body: dict) -> dict:
    import aiohttp

    todo = [(i, prompts[i % len(prompts)]) for i in range(clients * waves)]
    results: list[dict] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def client() -> None:
            while todo:
                i, prompt = todo.pop()
                results.append(await one_request(session, url, {**body, "prompt": prompt, "seed": 1000 + i}, stream))

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - start
    errors = [r["error"] for r in results if "error" in r]
    ok = [r for r in results if "error" not in r]
    tokens = sum(r["tokens"] for r in ok)
    row = {"clients": clients, "mode": "stream" if stream else "plain", "requests": len(ok), "errors": len(errors), "tokens": tokens,
           "wall_s": wall, "tokens_per_s": tokens / wall}
    if errors:
        row["first_error"] = errors[0]
    for key in ("ttft", "tpot", "latency"):
        values = sorted(r[key] for r in ok if key in r)
        if values:
            row[f"{key}_p50"] = values[len(values) // 2]
            row[f"{key}_p99"] = values[min(len(values) - 1, int(len(values) * 0.99))]
    if stream:
        row["events_per_token"] = sum(r.get("events", 0) for r in ok) / max(1, tokens)
    return row


# --- main -------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the CPU twin: demo model, loads 1 and 16, 32-token answers")
    parser.add_argument("--model-dir", help="CPU: a trained demo checkpoint instead of training one")
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--loads", help="comma-separated concurrent clients (GPU default 1,32,64,256; CPU 1,16)")
    parser.add_argument("--modes", default="plain,stream")
    parser.add_argument("--waves", type=int, default=2, help="requests per client (default 2)")
    parser.add_argument("--turns", type=int, help="turns per request (GPU default 8, CPU 1)")
    parser.add_argument("--max-tokens", type=int, help="tokens per turn (GPU default 128, CPU 32)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--server-overrides", default="", help="extra key=value overrides for fizzbot serve (space-separated)")
    parser.add_argument("--server-env", default="", help="KEY=VALUE environment variables for the server (space-separated)")
    parser.add_argument("--cpu-profile", action="store_true", help="report the cores each process used during each load")
    parser.add_argument("--work-dir", help="scratch folder (kept; a base model saved there is reused)")
    parser.add_argument("--json", default=os.path.join(os.environ.get("OUT", tempfile.gettempdir()), "gpu_serve.json"))
    args = parser.parse_args()
    loads = [int(x) for x in (args.loads or ("1,16" if args.cpu else "1,32,64,256")).split(",")]
    turns = args.turns or (1 if args.cpu else 8)
    max_tokens = args.max_tokens or (32 if args.cpu else 128)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="fizzbot-serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"benchmark": "gpu_serve" if not args.cpu else "cpu_serve", "settings": vars(args), "rows": []}
    t0 = time.perf_counter()
    if args.cpu:
        ckpt, prompts = cpu_checkpoint(work, args.train_steps, args.model_dir)
    else:
        ckpt, prompts = gpu_checkpoint(work)
    log(f"checkpoint {ckpt} ready in {time.perf_counter() - t0:.0f}s")
    port = free_port()
    peak = max(loads)
    overrides = [f"serve.max_concurrent_requests={max(peak, 16)}", "serve.max_queued_requests=512", f"serve.max_turns={max(8, turns)}",
                 f"serve.max_new_tokens={max(256, max_tokens)}", "serve.request_timeout_s=1800", "serve.blocking=true"]
    overrides += ["generate.device=cpu", "serve.num_cpus=2"] if args.cpu else ["generate.device=cuda", "generate.compile=true", "serve.num_gpus=1",
                                                                                "serve.num_cpus=4"]
    overrides += [o for o in args.server_overrides.split() if o]
    server_log = Path(os.environ.get("OUT", work)) / "serve_bench_server.log"
    proc = start_server(ckpt, port, overrides, server_log, dict(kv.split("=", 1) for kv in args.server_env.split() if kv))
    url = f"http://127.0.0.1:{port}"
    try:
        import requests

        from fizzbot.pipeline import wait_healthy

        t1 = time.perf_counter()
        # The baseline runs while the server starts (its compilation is CPU work; the server's is mostly Ray's start-up).
        if not args.skip_baseline:
            report["baseline"] = hf_sequential_baseline(ckpt, prompts, max_tokens) if args.cpu else hf_static_baseline(ckpt, prompts)
            log(f"baseline: {report['baseline']}")
        wait_healthy(url, timeout_s=600)
        report["server_start_s"] = time.perf_counter() - t1
        report["engine"] = requests.get(url + "/healthz", timeout=10).json().get("engine")
        log(f"fizzbot serve up in {report['server_start_s']:.0f}s (with the baseline meanwhile): {report['engine']}")
        body = {"max_tokens": max_tokens, "turns": turns, "temperature": 0.8, "top_p": 0.95, "eos_stop": False}
        asyncio.run(drive(url, prompts, min(4, peak), 1, False, body))  # warm-up: first requests capture graphs
        for clients in loads:
            for mode in args.modes.split(","):
                before = cpu_by_process(proc) if args.cpu_profile else None
                row = asyncio.run(drive(url, prompts, clients, args.waves, mode == "stream", body))
                if before is not None:
                    row["cores"] = cores_used(before, cpu_by_process(proc), row["wall_s"])
                report["rows"].append(row)
                log(json.dumps(row))
                Path(args.json).write_text(json.dumps(report, indent=2))
    finally:
        stop_server(proc)
    print_table(report)
    Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def print_table(report: dict) -> None:
    base = report.get("baseline", {}).get("tokens_per_s")
    print()
    if base:
        print(f"baseline: {report['baseline']['name']}: {base:,.0f} tokens/s")
    print(f"{'clients':>7} {'mode':>6} {'req':>5} {'err':>4} {'tok/s':>9} {'vs base':>8} {'ttft p50':>9} {'ttft p99':>9} {'tpot p50 ms':>11} {'tpot p99 ms':>11} {'ev/tok':>7}")
    for r in report["rows"]:
        ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        print(f"{r['clients']:>7} {r['mode']:>6} {r['requests']:>5} {r['errors']:>4} {r['tokens_per_s']:>9,.0f} {ratio:>8} "
              f"{r.get('ttft_p50', float('nan')):>9.3f} {r.get('ttft_p99', float('nan')):>9.3f} {1000 * r.get('tpot_p50', float('nan')):>11.2f} "
              f"{1000 * r.get('tpot_p99', float('nan')):>11.2f} {r.get('events_per_token', float('nan')):>7.2f}")
    plain = {r["clients"]: r["tokens_per_s"] for r in report["rows"] if r["mode"] == "plain"}
    stream = {r["clients"]: r["tokens_per_s"] for r in report["rows"] if r["mode"] == "stream"}
    for r in report["rows"]:
        if "cores" in r:
            print(f"cores used, {r['clients']} clients {r['mode']}: " + ", ".join(f"{k} {v}" for k, v in r["cores"].items()))
    for clients in sorted(set(plain) & set(stream)):
        print(f"streamed / plain at {clients} clients: {stream[clients] / plain[clients]:.2f}")
    if 1 in plain:
        for clients in sorted(plain):
            if clients > 1:
                print(f"{clients} clients / 1 client (plain): {plain[clients] / plain[1]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
