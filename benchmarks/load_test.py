#!/usr/bin/env python
"""Load held: the Serve endpoint under more concurrent clients than it admits, for many requests.

    .venv/bin/python benchmarks/load_test.py                        # `make reliability`: 10,000 requests, demo model
    .venv/bin/python benchmarks/load_test.py --requests 1000 --json /tmp/load.json
    .venv/bin/python benchmarks/load_test.py --model-dir runs/demo/<stamp>/checkpoint-300

What it does, in one run:
  * the model: `--model-dir`, else the demo model's shape (configs/demo.yaml: the tiny Llama, hidden
    192, 4 layers) trained here for `--train-steps` (default 20) steps on the demo corpus without
    Ray (the load does not depend on what the weights learned, only on their shape);
  * the endpoint: `fizzbot.serve.app.run_server` on a local Ray (2 CPUs), one replica (2 CPUs) with
    serve.max_concurrent_requests `--admit` (default 8) and serve.max_queued_requests `--queue`
    (default 8): it holds 16 requests, and the 17th gets 503 at once;
  * the load: `--clients` (default 24, above 16) HTTP client threads, each with its own
    requests.Session, in a closed loop: POST /v1/generate (a demo context of 1-4 messages, turns 1,
    max_new_tokens 16, seed i), the next as soon as the answer is in; after a 503 a client waits
    `--backoff` (default 0.5 s) before its next request, as a polite client does, so that refusals
    do not crowd out the work (the suite's shortened form waits 0.05 s, to be quick).
    It stops after `--requests` (default 10,000) requests;
  * memory: the replica process's resident memory (psutil, by its `ray::ServeReplica:load:` title)
    sampled every 0.5 s; growth is the median of the last tenth of the samples against the median of
    the tenth right after warm-up (the first `--warmup` share of the requests, default 0.1);
  * afterwards: GET /healthz and one POST /v1/generate must answer 200 (the endpoint serves normally).

It prints, and writes as JSON with `--json`: requests, statuses, failures (anything but 200 and
503, connection errors included), wall time, throughput (requests/s answered 200, and all), p50/p99
latency of the 200s and of the 503s, memory after warm-up, at the end, growth. Exit status 1 when a
status other than 200/503 was seen, growth reached 10 %, or the endpoint did not serve afterwards.
tests/test_load.py runs the same function with fewer requests (the suite's shortened form).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

APP = "load"


def log(message: str) -> None:
    print(f"[load] {message}", file=sys.stderr, flush=True)


@dataclass
class LoadResult:
    requests: int
    clients: int
    capacity: int
    wall_s: float
    statuses: dict[str, int]
    failures: list[str]
    ok_per_s: float
    requests_per_s: float
    p50_ok_ms: float
    p99_ok_ms: float
    p50_503_ms: float | None
    p99_503_ms: float | None
    rss_after_warmup_mb: float
    rss_end_mb: float
    rss_peak_mb: float
    rss_growth: float
    served_after: bool
    samples: list[tuple[float, float]] = field(default_factory=list)

    @property
    def held(self) -> bool:
        return not self.failures and self.rss_growth < 0.10 and self.served_after


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def replica_rss(app: str = APP) -> int | None:
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        title = (proc.info["cmdline"] or [""])[0]
        if title.startswith(f"ray::ServeReplica:{app}:"):
            try:
                return proc.memory_info().rss
            except psutil.Error:
                return None
    return None


def request_bodies(names: list[str], n: int) -> list[dict]:
    rng = random.Random(0)
    words = "hey anyone around tonight build failing again lol nice ship it coffee first who broke main".split()
    bodies = []
    for i in range(n):
        context = [{"username": rng.choice(names), "content": " ".join(rng.choices(words, k=rng.randint(2, 9)))}
                   for _ in range(rng.randint(1, 4))]
        bodies.append({"context": context, "turns": 1, "max_new_tokens": 16, "seed": i})
    return bodies


def run_load(url: str, names: list[str], *, requests_total: int, clients: int, capacity: int, backoff: float = 0.05,
             warmup: float = 0.1, app: str = APP) -> LoadResult:
    """Drive `url` with `clients` closed-loop clients for `requests_total` requests; see the module docstring."""
    import requests

    bodies = request_bodies(names, requests_total)
    next_index = iter(range(requests_total))
    lock = threading.Lock()
    records: list[tuple[float, int, float]] = []  # (start, status, seconds); status -1: no HTTP answer
    failures: list[str] = []
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def client() -> None:
        session = requests.Session()
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            started = time.monotonic()
            try:
                response = session.post(f"{url}/v1/generate", json=bodies[i], timeout=120)
                status = response.status_code
                if status not in (200, 503):
                    failures.append(f"{status}: {response.text[:200]}")
                elif status == 503 and response.json()["error"]["type"] != "overloaded_error":
                    failures.append(f"503 of another kind: {response.text[:200]}")
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none ends the run
                status = -1
                failures.append(f"no answer: {exc!r}"[:200])
            records.append((started, status, time.monotonic() - started))
            if status == 503:
                time.sleep(backoff)

    def sample_memory() -> None:
        while not done.is_set():
            rss = replica_rss(app)
            if rss is not None:
                samples.append((time.monotonic(), rss / 2**20))
            done.wait(0.5)

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    done.set()
    sampler.join(timeout=5)

    statuses = Counter(str(status) for _, status, _ in records)
    ok = [seconds for _, status, seconds in records if status == 200]
    busy = [seconds for _, status, seconds in records if status == 503]
    warm_until = sorted(start for start, _, _ in records)[int(warmup * len(records))]
    after = [rss for t, rss in samples if t >= warm_until]
    tenth = max(1, len(after) // 10)
    rss_warm, rss_end = statistics.median(after[:tenth]), statistics.median(after[-tenth:])
    served_after = False
    try:
        health = requests.get(f"{url}/healthz", timeout=30)
        answer = requests.post(f"{url}/v1/generate", json=bodies[0], timeout=120)
        served_after = health.status_code == 200 and answer.status_code == 200 and len(answer.json()["messages"]) == 1
    except Exception as exc:  # noqa: BLE001
        failures.append(f"after the load: {exc!r}"[:200])
    return LoadResult(
        requests=len(records), clients=clients, capacity=capacity, wall_s=round(wall, 1), statuses=dict(statuses),
        failures=failures[:20], ok_per_s=round(len(ok) / wall, 2), requests_per_s=round(len(records) / wall, 2),
        p50_ok_ms=round(1000 * percentile(ok, 0.5), 1), p99_ok_ms=round(1000 * percentile(ok, 0.99), 1),
        p50_503_ms=round(1000 * percentile(busy, 0.5), 1) if busy else None,
        p99_503_ms=round(1000 * percentile(busy, 0.99), 1) if busy else None,
        rss_after_warmup_mb=round(rss_warm, 1), rss_end_mb=round(rss_end, 1), rss_peak_mb=round(max(after), 1),
        rss_growth=round((rss_end - rss_warm) / rss_warm, 4), served_after=served_after,
        samples=[(round(t - started, 1), round(rss, 1)) for t, rss in samples],
    )


def serve_for_load(model_dir: Path, admit: int, queue: int, port: int) -> str:
    from fizzbot.config import load_config
    from fizzbot.pipeline import wait_healthy
    from fizzbot.serve.app import run_server

    cfg = load_config(None, [
        f"serve.model_dir={model_dir}", f"serve.port={port}", "generate.device=cpu", "serve.num_cpus=2",
        f"serve.max_concurrent_requests={admit}", f"serve.max_queued_requests={queue}",
    ])
    url = run_server(cfg, name=APP, route_prefix=f"/{APP}")
    wait_healthy(url)
    return url


def demo_model(work: Path, steps: int) -> Path:
    from fizzbot.config import load_config
    from fizzbot.data.demo import write_demo_corpus
    from fizzbot.data.pipeline import prepare
    from fizzbot.train.trainer import train

    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"data.inputs=[{work / 'corpus'}]", f"data.output={work / 'prepared'}", f"data.path={work / 'prepared'}",
        f"run.dir={work / 'runs'}", "run.name=load", "training.num_workers=1", f"training.max_steps={steps}",
        f"training.eval_steps={steps}", f"training.save_steps={steps}", "training.eval_max_batches=2", "training.warmup_steps=1",
    ])
    write_demo_corpus(work / "corpus", seed=0, days=6)
    prepare(cfg.data, use_ray=False, report=False)
    return train(cfg, use_ray=False).best_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--admit", type=int, default=8, help="serve.max_concurrent_requests")
    parser.add_argument("--queue", type=int, default=8, help="serve.max_queued_requests")
    parser.add_argument("--backoff", type=float, default=0.5, help="seconds a client waits after a 503")
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if args.clients <= args.admit + args.queue:
        parser.error("--clients must be above --admit + --queue: the point is more load than the replica admits")
    import logging

    import ray
    from ray import serve

    from fizzbot.chat.speakers import SpeakerMap

    with tempfile.TemporaryDirectory(prefix="fizzbot-load-") as tmp:
        model_dir = args.model_dir or demo_model(Path(tmp), args.train_steps)
        names = [s.username for s in SpeakerMap.load(model_dir / "speaker_map.json").speakers]
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            url = serve_for_load(model_dir, args.admit, args.queue, port)
            log(f"{args.requests:,} requests, {args.clients} clients, the replica admits {args.admit} + {args.queue} queued")
            result = run_load(url, names, requests_total=args.requests, clients=args.clients, capacity=args.admit + args.queue,
                              backoff=args.backoff)
        finally:
            serve.shutdown()
            ray.shutdown()
    figures = {k: v for k, v in asdict(result).items() if k != "samples"}
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**figures, "memory_samples_s_mb": result.samples}, indent=2) + "\n")
    return 0 if result.held else 1


if __name__ == "__main__":
    raise SystemExit(main())
