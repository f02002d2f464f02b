#!/usr/bin/env python
"""Throughput and memory of `fizzbot prepare`: the Ray Data pipeline against the same stages in one process.

    .venv/bin/python benchmarks/prepare_throughput.py                    # 1,000,000+ messages
    .venv/bin/python benchmarks/prepare_throughput.py --messages 200000  # a quick check
    .venv/bin/python benchmarks/prepare_throughput.py --repeat 5 --work-dir /tmp/fizzbench --keep
    .venv/bin/python benchmarks/prepare_throughput.py --warm --baseline ../main   # against another checkout

The corpus is the real Ubuntu IRC logs (../shared/data/ubuntu-irc/logs) copied as many times as needed.
Each copy is its own channel, `#ubuntu-rep<k>`: the IRC reader takes a log's channel from the log's own
join and notice lines first (all 153 logs name `#ubuntu` there), so the copies have `#ubuntu` rewritten
to `#ubuntu-rep<k>`, and their folder carries the same name for logs that name no channel. (Shifting the
dates instead would keep one giant `#ubuntu`; `data.irc_channel` would force one channel on all.)

One run measures:
  1. the plain pipeline (`prepare(cfg, use_ray=False)`) in a child process: time, and its max RSS;
  2. the Ray Data pipeline (`prepare(cfg, use_ray=True)`) on a fresh local Ray (num_cpus=2), started
     before the clock (the time with the start is shown too): time, the peak summed RSS of the driver
     and the Ray worker processes (psutil, every 0.2 s from a thread), of all Ray processes, and the
     peak object store use; then that the two outputs are byte-identical;
  3. memory scaling: the same, on a fresh Ray, for a quarter of the corpus (and the plain process too),
     to show whether memory grows with the corpus.
With `--baseline PATH` (another checkout of fizzbot, e.g. the main branch), its plain pipeline runs on the
same corpus in the same run, before and after this checkout's (the mean of the two), and the report
gives the ratio: a change's cost measured on one machine at one time.
Both pipelines skip report.png (drawing it is the same fixed cost for both).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOGS = REPO.parent / "shared" / "data" / "ubuntu-irc" / "logs"
MiB = 1024 * 1024
SAMPLE_S = 0.2
NUM_CPUS = 2
COMPARED = ("train.jsonl", "val.jsonl", "speaker_map.json")
_UBUNTU_RE = re.compile(r"#ubuntu(?!\w|-\w)", re.IGNORECASE)  # not #ubuntu-kernel; yes -nick:#ubuntu- notices

sys.path.insert(0, str(REPO))


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- the corpus ------------------------------------------------------------------------------------


@dataclass
class Corpus:
    root: Path
    files: list[tuple[Path, int]]  # (path, messages), in order
    repetitions: float
    channels: list[str]

    @property
    def messages(self) -> int:
        return sum(n for _, n in self.files)

    def folders(self) -> list[str]:
        return [str(self.root / channel) for channel in self.channels]

    def quarter(self) -> tuple[list[str], int]:
        """The first files holding a quarter of the messages."""
        chosen, total = [], 0
        for path, n in self.files:
            if total >= self.messages / 4:
                break
            chosen.append(str(path))
            total += n
        return chosen, total


def count_messages(paths: list[Path]) -> dict[str, int]:
    """Messages the IRC reader yields per log (what `prepare` counts as read)."""
    from fizzbot.data.formats import SourceUnit, read_unit
    from fizzbot.data.messages import ReadOptions

    return {p.name: sum(1 for _ in read_unit(SourceUnit(str(p), "irc"), ReadOptions(on_error="skip"))) for p in paths}


def build_corpus(work: Path, target: int, repeat: int | None) -> Corpus:
    sources = sorted(p for p in LOGS.glob("*.log"))
    if not sources:
        sys.exit(f"no *.log files in {LOGS}")
    root = work / "corpus"
    manifest_path = root / "manifest.json"
    wanted = {"source": str(LOGS), "target": target, "repeat": repeat, "rewrite": _UBUNTU_RE.pattern}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("wanted") == wanted and all((root / rel).is_file() for rel in manifest["files"]):
            log(f"reusing the corpus in {root}")
            files = [(root / rel, n) for rel, n in manifest["files"].items()]
            return Corpus(root, files, manifest["repetitions"], manifest["channels"])
        shutil.rmtree(root)
    t0 = time.perf_counter()
    per_file = count_messages(sources)
    per_copy = sum(per_file.values())
    if repeat is not None:
        plan = [(k, sources) for k in range(repeat)]
    else:
        plan, total, k = [], 0, 0
        while total < target:
            chosen = []
            for src in sources:
                if total >= target:
                    break
                chosen.append(src)
                total += per_file[src.name]
            plan.append((k, chosen))
            k += 1
    files: list[tuple[Path, int]] = []
    channels = []
    for k, chosen in plan:
        channel = f"#ubuntu-rep{k}"
        folder = root / channel
        folder.mkdir(parents=True)
        channels.append(channel)
        for src in chosen:
            text = src.read_text(encoding="utf-8")
            dest = folder / src.name
            dest.write_text(_UBUNTU_RE.sub(channel, text), encoding="utf-8")
            files.append((dest, per_file[src.name]))
    corpus = Corpus(root, files, sum(n for _, n in files) / per_copy, channels)
    manifest_path.write_text(json.dumps({
        "wanted": wanted,
        "repetitions": corpus.repetitions,
        "channels": channels,
        "files": {str(p.relative_to(root)): n for p, n in files},
    }, indent=1))
    log(f"corpus: {corpus.messages:,} messages in {len(files)} files, {len(channels)} channels "
        f"({corpus.repetitions:.2f} copies of {len(sources)} logs, {per_copy:,} messages each) in {time.perf_counter() - t0:.1f}s")
    return corpus


# --- measuring -----------------------------------------------------------------------------------


def data_config(inputs: list[str], output: Path):
    from fizzbot.config import DataConfig

    return DataConfig(inputs=inputs, output=str(output))


def digest(folder: Path) -> dict[str, str]:
    out = {}
    for name in COMPARED:
        h = hashlib.sha256()
        with open(folder / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out[name] = h.hexdigest()
    return out


def plain_child(inputs: list[str], output: str) -> None:
    """Runs in the child process: one plain `prepare`, then one JSON line on stdout."""
    from fizzbot.data.pipeline import prepare

    cfg = data_config(inputs, Path(output))
    start = time.perf_counter()
    summary = prepare(cfg, use_ray=False, report=False)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "messages": summary.messages_read, "kept": summary.messages_kept,
                      "train": summary.train_examples, "val": summary.val_examples, "max_rss": peak_rss_self()}))


def peak_rss_self() -> int:
    """This process's peak RSS in bytes.

    VmHWM belongs to the process's own address space, which exec starts afresh; getrusage's ru_maxrss
    does not: on Linux a child inherits its parent's peak across fork and exec, so a child started by a
    big parent (this one, after a Ray run) would report the parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_plain(inputs: list[str], output: Path, repo: Path = REPO) -> dict:
    """One plain `prepare` in a child process, with the fizzbot of `repo` (this checkout, or a baseline)."""
    spec = json.dumps({"inputs": inputs, "output": str(output)})
    script = repo / "benchmarks" / "prepare_throughput.py"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, str(script), "--plain-child", spec], stdout=subprocess.PIPE, text=True, cwd=repo)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"the plain prepare failed (exit {proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # CPU seconds of the child: on a machine others share, far steadier than the wall clock.
    result["cpu_seconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["digest"] = digest(output)
    result["channels"] = sorted(json.loads((output / "stats.json").read_text(encoding="utf-8"))["channels"])
    return result


_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


@dataclass
class MemorySampler:
    """Peak RSS of the driver plus Ray's worker processes, of every Ray process, and of the object store."""

    interval: float = SAMPLE_S
    peak_workers: int = 0  # driver + workers (ray::IDLE, ray::MapBatches(...), ...)
    peak_all: int = 0  # driver + every process Ray started (gcs, raylet, agents, dashboard, workers)
    peak_store: int = 0
    most_workers: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _store_used(self) -> int | None:
        try:  # private API: the raylet's object store stats
            from ray._private.internal_api import get_memory_info_reply, get_state_from_address

            return get_memory_info_reply(get_state_from_address()).store_stats.object_store_bytes_used
        except Exception:
            return None

    def sample(self) -> None:
        import psutil

        me = psutil.Process()
        workers_rss = all_rss = me.memory_info().rss
        n_workers = 0
        for proc in me.children(recursive=True):
            try:
                rss = proc.memory_info().rss
                name = proc.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            all_rss += rss
            if name.startswith("ray::") and not name.startswith(_AGENTS):
                workers_rss += rss
                n_workers += 1
        self.peak_workers = max(self.peak_workers, workers_rss)
        self.peak_all = max(self.peak_all, all_rss)
        self.most_workers = max(self.most_workers, n_workers)
        store = self._store_used()
        if store is not None:
            self.peak_store = max(self.peak_store, store)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "MemorySampler":
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def run_ray(inputs: list[str], output: Path, warm: bool = False) -> dict:
    """A fresh local Ray, one `prepare(use_ray=True)` (and with `warm` a second one), Ray shut down again."""
    import ray

    from fizzbot.data.pipeline import prepare

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=NUM_CPUS, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # keep the output readable; the pipeline's own settings stay
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        started = time.perf_counter()
        with MemorySampler() as idle:  # Ray's footprint before any work: a short look
            time.sleep(0.5)
        with MemorySampler() as mem:
            t1 = time.perf_counter()
            summary = prepare(data_config(inputs, output), use_ray=True, report=False)
            t2 = time.perf_counter()
        warm_seconds = None
        if warm:  # the same again on the workers the first run started: what is fixed cost, what is throughput
            again = output.with_name(output.name + "-warm")
            t3 = time.perf_counter()
            prepare(data_config(inputs, again), use_ray=True, report=False)
            warm_seconds = time.perf_counter() - t3
            shutil.rmtree(again, ignore_errors=True)
    finally:
        ray.shutdown()
    return {
        "warm_seconds": warm_seconds,
        "seconds": t2 - t1,
        "seconds_with_start": (started - t0) + (t2 - t1),
        "start": started - t0,
        "messages": summary.messages_read,
        "kept": summary.messages_kept,
        "train": summary.train_examples,
        "val": summary.val_examples,
        "idle_workers": idle.peak_workers,
        "idle_all": idle.peak_all,
        "peak_workers": mem.peak_workers,
        "peak_all": mem.peak_all,
        "peak_store": mem.peak_store,
        "most_workers": mem.most_workers,
        "samples": mem.samples,
        "digest": digest(output),
    }


# --- the report -----------------------------------------------------------------------------------


def mib(n: int) -> str:
    return f"{n / MiB:,.0f} MiB" if n >= 10 * MiB or n == 0 else f"{n / MiB:.2f} MiB"


def rate(messages: int, seconds: float) -> str:
    return f"{messages / seconds:,.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000, help="at least this many messages (default 1,000,000)")
    parser.add_argument("--repeat", type=int, help="whole copies of the logs instead (overrides --messages)")
    parser.add_argument("--work-dir", help="where the corpus and outputs go (default: a temporary folder, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the outputs (the corpus in --work-dir is always kept)")
    parser.add_argument("--skip-scaling", action="store_true", help="leave out the quarter-corpus runs")
    parser.add_argument("--warm", action="store_true", help="also time a second Ray run on the workers the first one started")
    parser.add_argument("--baseline", help="another checkout of fizzbot whose plain pipeline is timed on the same corpus")
    parser.add_argument("--plain-child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.plain_child:
        spec = json.loads(args.plain_child)
        plain_child(spec["inputs"], spec["output"])
        return 0

    if not LOGS.is_dir():
        print(
            f"prepare_throughput: the Ubuntu IRC logs are not at {LOGS}.\n"
            "This benchmark builds its corpus from them; they live in the workspace's shared/ folder beside\n"
            "the repository (a plain clone has none), so there is nothing to measure here.",
            file=sys.stderr,
        )
        return 1
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")

    temporary = args.work_dir is None
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fizzbot-bench-")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus = build_corpus(work, args.messages, args.repeat)
        inputs = corpus.folders()
        quarter_inputs, quarter_messages = corpus.quarter()
        outputs = {name: work / f"out-{name}" for name in ("plain", "ray", "plain-quarter", "ray-quarter")}
        for path in outputs.values():
            shutil.rmtree(path, ignore_errors=True)

        baseline_runs: list[dict] = []
        baseline_repo = Path(args.baseline).absolute() if args.baseline else None
        if baseline_repo is not None:
            log(f"baseline ({baseline_repo}) plain process on {corpus.messages:,} messages ...")
            baseline_runs.append(run_plain(inputs, work / "out-baseline", baseline_repo))
            shutil.rmtree(work / "out-baseline", ignore_errors=True)
        log(f"plain process on {corpus.messages:,} messages ...")
        plain = run_plain(inputs, outputs["plain"])
        if baseline_repo is not None:
            log("baseline plain process again ...")
            baseline_runs.append(run_plain(inputs, work / "out-baseline", baseline_repo))
            shutil.rmtree(work / "out-baseline", ignore_errors=True)
        log(f"Ray Data on {corpus.messages:,} messages ...")
        ray_run = run_ray(inputs, outputs["ray"], warm=args.warm)
        identical = plain["digest"] == ray_run["digest"]
        different = [n for n in COMPARED if plain["digest"][n] != ray_run["digest"][n]]
        if not args.keep:
            for name in ("plain", "ray"):
                shutil.rmtree(outputs[name], ignore_errors=True)

        quarter = plain_quarter = None
        if not args.skip_scaling:
            log(f"scaling: a quarter of the corpus ({quarter_messages:,} messages), plain and Ray ...")
            plain_quarter = run_plain(quarter_inputs, outputs["plain-quarter"])
            quarter = run_ray(quarter_inputs, outputs["ray-quarter"])
            if plain_quarter["digest"] != quarter["digest"]:
                different.append("quarter corpus")
                identical = False
            if not args.keep:
                for name in ("plain-quarter", "ray-quarter"):
                    shutil.rmtree(outputs[name], ignore_errors=True)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    n = plain["messages"]
    channel_range = corpus.channels[0] if len(corpus.channels) == 1 else f"{corpus.channels[0]}..{corpus.channels[-1]}"
    assert ray_run["messages"] == n == corpus.messages, (ray_run["messages"], n, corpus.messages)
    lines = [
        "",
        "fizzbot prepare throughput (benchmarks/prepare_throughput.py)",
        f"corpus: {n:,} messages read, {plain['kept']:,} kept -> {plain['train']:,} train + {plain['val']:,} val examples",
        f"        {len(corpus.files)} IRC logs = {corpus.repetitions:.2f} copies of the {len(list(LOGS.glob('*.log')))} Ubuntu logs;",
        f"        each copy its own channel ({channel_range}): '#ubuntu' rewritten in the copied",
        "        logs (the reader takes the channel from their join lines) and the folder named after it",
        f"        channels in the output: {len(plain['channels'])}"
        + ("" if plain["channels"] == sorted(corpus.channels) else f" -- NOT the {len(corpus.channels)} expected: {plain['channels'][:8]}"),
        f"machine: {os.cpu_count()} CPUs; Ray local, num_cpus={NUM_CPUS}; report.png not drawn",
        "",
        f"{'':34}{'seconds':>9}{'messages/s':>13}   peak memory",
        f"{'plain process (use_ray=False)':34}{plain['seconds']:9.1f}{rate(n, plain['seconds']):>13}   max RSS {mib(plain['max_rss'])}",
        f"{'Ray Data (use_ray=True)':34}{ray_run['seconds']:9.1f}{rate(n, ray_run['seconds']):>13}   "
        f"driver+workers {mib(ray_run['peak_workers'])} (up to {ray_run['most_workers']} worker processes); "
        f"all Ray processes {mib(ray_run['peak_all'])}; object store {mib(ray_run['peak_store'])}",
        f"{'  incl. Ray start (%.1f s)' % ray_run['start']:34}{ray_run['seconds_with_start']:9.1f}"
        f"{rate(n, ray_run['seconds_with_start']):>13}   (idle Ray: driver+workers {mib(ray_run['idle_workers'])}, "
        f"all {mib(ray_run['idle_all'])})",
    ]
    if ray_run["warm_seconds"]:
        lines.append(f"{'  second run, same Ray (--warm)':34}{ray_run['warm_seconds']:9.1f}{rate(n, ray_run['warm_seconds']):>13}")
    if baseline_runs:
        mean = sum(r["seconds"] for r in baseline_runs) / len(baseline_runs)
        cpu = sum(r["cpu_seconds"] for r in baseline_runs) / len(baseline_runs)
        runs_text = ", ".join(f"{r['seconds']:.1f}" for r in baseline_runs)
        lines += [
            f"{'baseline plain process':34}{mean:9.1f}{rate(n, mean):>13}   "
            f"({args.baseline}; runs {runs_text} s, before and after)",
            f"this checkout / baseline, plain: {mean / plain['seconds']:.2f}x the speed (wall clock); "
            f"CPU seconds {plain['cpu_seconds']:.1f} against {cpu:.1f} ({cpu / plain['cpu_seconds']:.2f}x)",
        ]
    lines += [
        "",
        f"Ray / plain speed: {plain['seconds'] / ray_run['seconds']:.2f}x (prepare only), "
        f"{plain['seconds'] / ray_run['seconds_with_start']:.2f}x (with the Ray start)"
        + (f", {plain['seconds'] / ray_run['warm_seconds']:.2f}x (second run)" if ray_run["warm_seconds"] else ""),
        "outputs identical (train.jsonl, val.jsonl, speaker_map.json): "
        + ("yes" if identical else f"NO: {', '.join(different)} differ"),
    ]
    if quarter is not None:
        lines += [
            "",
            "memory against corpus size (fresh Ray each run)",
            f"{'':30}{'messages':>11}{'plain max RSS':>15}{'Ray drv+workers':>17}{'all Ray':>10}{'obj store':>11}{'Ray s':>7}",
            f"{'  1/4 of the corpus':30}{quarter['messages']:>11,}{mib(plain_quarter['max_rss']):>15}"
            f"{mib(quarter['peak_workers']):>17}{mib(quarter['peak_all']):>10}{mib(quarter['peak_store']):>11}{quarter['seconds']:>7.1f}",
            f"{'  whole corpus':30}{n:>11,}{mib(plain['max_rss']):>15}"
            f"{mib(ray_run['peak_workers']):>17}{mib(ray_run['peak_all']):>10}{mib(ray_run['peak_store']):>11}{ray_run['seconds']:>7.1f}",
            f"  growth for {n / quarter['messages']:.1f}x the messages: plain {plain['max_rss'] / plain_quarter['max_rss']:.2f}x, "
            f"Ray driver+workers {ray_run['peak_workers'] / quarter['peak_workers']:.2f}x",
        ]
    lines += [
        "",
        f"RSS is sampled every {SAMPLE_S} s with psutil (a spike shorter than that can be missed); RSS counts the",
        "object store pages a process has mapped, so the sums over processes count shared memory more than once.",
    ]
    print("\n".join(lines))
    return 0 if identical else 3


if __name__ == "__main__":
    sys.exit(main())
