"""Faults, injected into the real thing: the Serve replica's process killed under load, a Ray Data
worker killed during `fizzbot prepare`, the `fizzbot train` driver killed and run again, a disk that
fills up while a checkpoint is written, and a weight file cut short in the newest checkpoint.

The endpoint is exercised over HTTP only; training and preparation through the `fizzbot` command.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from conftest import TINY_OVERRIDES

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_titled(prefix: str) -> list:
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        title = (proc.info["cmdline"] or [""])[0]
        if title.startswith(prefix):
            found.append(proc)
    return found


def record(name: str, figures: dict) -> None:
    """A fault's figures, printed, and kept in $FIZZBOT_RELIABILITY_OUT/faults.json when set (docs/RELIABILITY.md)."""
    print(f"{name}: {json.dumps(figures)}")
    out = os.environ.get("FIZZBOT_RELIABILITY_OUT")
    if out:
        path = Path(out) / "faults.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        found = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**found, name: figures}, indent=2) + "\n")


def cli_env(**extra: str) -> dict:
    """The environment of a `fizzbot` command started by a test: this checkout's package, and a Ray of
    its own (RAY_ADDRESS=local: never a `ray start` head someone else left on this machine)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "local", **extra}


# --- the Serve replica killed under load ------------------------------------------------------------------


def test_a_killed_replica_is_replaced_and_in_flight_requests_get_a_json_error(ray_local, tiny_checkpoint):
    from ray import serve

    from fizzbot.config import load_config
    from fizzbot.pipeline import wait_healthy
    from fizzbot.serve.app import run_server

    port = free_port()
    cfg = load_config(None, [f"serve.model_dir={tiny_checkpoint}", f"serve.port={port}", "generate.device=cpu",
                             "serve.max_concurrent_requests=4", "serve.max_queued_requests=4"])
    serve.shutdown()  # a Serve an earlier test left would keep its own port: ours must apply
    url = run_server(cfg, name="faulty")
    try:
        wait_healthy(url)
        check_replica_kill(url)
    finally:
        serve.delete("faulty")  # its replica holds a CPU of the session's Ray: later tests need it back


def check_replica_kill(url: str) -> None:
    body = {"context": [], "turns": 2, "max_new_tokens": 48, "eos_stop": False, "seed": 0}
    outcomes: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = session.post(url + "/v1/generate", json=body, timeout=60)
                outcomes.append((started, response.status_code, response.headers.get("content-type", ""), response.text[:200]))
            except requests.RequestException as exc:  # a dropped connection is an answer too, but not a JSON one
                outcomes.append((started, -1, "", repr(exc)[:200]))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(6)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while sum(1 for o in outcomes if o[1] == 200) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        (replica,) = processes_titled("ray::ServeReplica:faulty:")
        killed_at = time.monotonic()
        replica.send_signal(signal.SIGKILL)
        # /healthz recovers: Serve brings a new replica up.
        deadline = time.monotonic() + 180
        healthy = False
        while time.monotonic() < deadline:
            try:
                healthy = requests.get(url + "/healthz", timeout=5).status_code == 200 and processes_titled("ray::ServeReplica:faulty:")[0].pid != replica.pid
            except (requests.RequestException, IndexError):
                healthy = False
            if healthy:
                break
            time.sleep(0.5)
        assert healthy, "no healthy replica within 180 s of the kill"
        recovered_at = time.monotonic()
        time.sleep(3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a request hung"
    during = [o for o in outcomes if killed_at - 30 < o[0] < recovered_at and o[1] != 200]
    after = [o for o in outcomes if o[0] > recovered_at]
    record("replica_killed", {
        "clients": len(threads), "requests": len(outcomes), "statuses": dict(Counter(str(o[1]) for o in outcomes)),
        "failed_around_the_kill": len(during), "healthy_again_s": round(recovered_at - killed_at, 1),
        "after_recovery": dict(Counter(str(o[1]) for o in after)), "error_bodies": sorted({o[3][:120] for o in during}),
    })
    for started, status, content_type, text in during:
        assert status in (500, 502, 503), (status, text)
        assert content_type.startswith("application/json"), (status, content_type, text)
        assert set(json.loads(text)) == {"error"}, text
    assert after and all(o[1] == 200 for o in after), Counter(o[1] for o in after)


# --- a Ray Data worker killed during `fizzbot prepare` -----------------------------------------------------


def descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_a_ray_data_worker_killed_during_prepare_is_retried_and_nothing_is_lost(tmp_path):
    from fizzbot.config import load_config
    from fizzbot.data.demo import write_demo_corpus
    from fizzbot.data.pipeline import prepare

    corpus, out = tmp_path / "corpus", tmp_path / "prepared"
    write_demo_corpus(corpus, seed=0, days=40)
    reference = tmp_path / "reference"
    prepare(load_config(None, [f"data.inputs=[{corpus}]", f"data.output={reference}"]).data, use_ray=False, report=False)

    proc = subprocess.Popen([sys.executable, "-m", "fizzbot.cli", "prepare", "--input", str(corpus), "--output", str(out)],
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    killed = []
    try:
        deadline = time.monotonic() + 240
        while not killed and proc.poll() is None and time.monotonic() < deadline:
            for child in descendants(proc.pid):
                try:
                    title = (child.cmdline() or [""])[0]
                except Exception:  # noqa: BLE001 - gone meanwhile
                    continue
                if "MapBatches(apply)" in title:
                    child.send_signal(signal.SIGKILL)
                    killed.append(title)
                    break
            time.sleep(0.02)
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert killed, "no Ray Data worker was seen at work: make the corpus bigger"
    record("ray_data_worker_killed", {"killed": killed[0], "exit_status": proc.returncode,
                                      "identical_to_an_undisturbed_run": proc.returncode == 0 and all(
                                          (out / n).read_bytes() == (reference / n).read_bytes() for n in ("train.jsonl", "val.jsonl"))})
    if proc.returncode == 0:  # retried by Ray: the same data as a run nobody disturbed
        for name in ("train.jsonl", "val.jsonl", "speaker_map.json"):
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    else:  # or refused in one line, and nothing that looks like output
        assert error_line(stderr, "fizzbot prepare: error: ") and "Traceback" not in stderr, stderr[-3000:]
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prepared.partial-")]


# --- the `fizzbot train` driver killed, then the same command again -------------------------------------------


def run_folders(run_root: Path) -> list[Path]:
    """The runs under `run.dir/<name>` (not the `.fizzbot` marker that says fizzbot wrote the folder)."""
    if not run_root.is_dir():
        return []
    return sorted(p for p in run_root.iterdir() if p.is_dir() and not p.name.startswith("."))


def complete_steps(run_root: Path) -> list[int]:
    from fizzbot.artifacts import checkpoint as ckpt

    return sorted(step for run in run_folders(run_root) for step, _, _ in ckpt.checkpoints_of(run))


def test_the_train_driver_killed_and_the_same_command_again_resumes(demo_prepared, tmp_path):
    from fizzbot.artifacts import checkpoint as ckpt

    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "fizzbot.cli", "train", *TINY_OVERRIDES, "model.method=full", f"data.path={demo_prepared}",
               f"run.dir={runs}", "run.name=driver", "training.max_steps=12", "training.save_steps=4", "training.eval_steps=4",
               "training.eval_max_batches=1", "training.log_steps=4", "training.keep_checkpoints=3"]
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(command, env=cli_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not complete_steps(runs / "driver") and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, f"the run ended before its driver could be killed:\n{(tmp_path / 'first.log').read_text()[-2000:]}"
        ray_processes = descendants(first.pid)
        first.send_signal(signal.SIGKILL)  # the driver alone: not its process group, not a worker
        first.wait(timeout=30)
        # The local Ray the driver started goes with it (no orphaned worker writing more checkpoints).
        import psutil

        gone, alive = psutil.wait_procs(ray_processes, timeout=60)
        # Read once the workers are gone: one may finish a checkpoint in the moment it outlives the driver.
        on_disk = complete_steps(runs / "driver")
        # Ray's dashboard and runtime-env agents outlive their raylet for a while; they run no task.
        leftover = [(p.pid, _title(p)) for p in alive if not _title(p).startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent"))]
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
        for process in alive if "alive" in locals() else []:
            process.kill()  # the lingering agents of our own run's Ray, nothing else
        if _group_alive(first.pid):
            os.killpg(first.pid, signal.SIGKILL)
    assert not leftover, f"processes of the killed driver's Ray still running: {leftover}"
    (run_dir,) = run_folders(runs / "driver")
    assert on_disk and not (run_dir / ckpt.COMPLETED).exists()

    second = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    assert f"resuming run {runs.resolve()}/driver/{run_dir.name}" in second.stderr
    assert run_folders(runs / "driver") == [run_dir]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    starts = [m for m in metrics if m["kind"] == "start"]
    resumed = starts[-1]["resumed_from_step"]
    record("train_driver_killed", {"complete_checkpoints_at_kill": on_disk, "resumed_from_step": resumed,
                                   "final_step": json.loads((run_dir / ckpt.COMPLETED).read_text())["final_step"] if (run_dir / ckpt.COMPLETED).exists() else None})
    assert len(starts) == 2 and resumed in on_disk and resumed > 0
    assert json.loads((run_dir / ckpt.COMPLETED).read_text())["final_step"] == 12


def _title(proc) -> str:
    try:
        return " ".join(proc.cmdline())[:120]
    except Exception:  # noqa: BLE001 - gone meanwhile
        return "?"


def error_line(stderr: str, prefix: str) -> str:
    """The one error line a command printed (progress bars write `\r` lines around it)."""
    found = [part for line in stderr.splitlines() for part in line.split("\r") if part.startswith(prefix)]
    assert len(found) == 1, stderr[-3000:]
    return found[0]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


# --- a full disk while a checkpoint is written -------------------------------------------------------------


def test_a_full_disk_while_writing_a_checkpoint(demo_prepared, tiny_checkpoint, tmp_path):
    """The run folder on a small tmpfs of its own (a mount namespace: `unshare`), which fills up a few
    checkpoints in: a clear one-line error, the earlier checkpoints intact, nothing that looks complete."""
    import torch

    from fizzbot.artifacts import checkpoint as ckpt
    from fizzbot.artifacts.loading import load_for_inference

    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True, text=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip(f"no mount namespace here for a small filesystem: {probe.stderr.strip()}")
    checkpoint_bytes = sum(p.stat().st_size for p in tiny_checkpoint.rglob("*") if p.is_file())
    # Room for the run's own files and two and a half checkpoints: the third cannot fit.
    size_kb = int((2.5 * checkpoint_bytes + 2 * 2**20) / 1024)
    runs, after = tmp_path / "runs", tmp_path / "after"
    runs.mkdir()
    after.mkdir()
    train = " ".join([sys.executable, "-m", "fizzbot.cli", "train", "--no-ray", *TINY_OVERRIDES, "model.method=full",
                      f"data.path={demo_prepared}", f"run.dir={runs}", "run.name=full", "training.max_steps=40",
                      "training.save_steps=4", "training.eval_steps=4", "training.eval_max_batches=1", "training.keep_checkpoints=10"])
    script = f"mount -t tmpfs -o size={size_kb}k tmpfs {runs} && {train}; rc=$?; cp -a {runs}/. {after}/; exit $rc"
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    error = error_line(proc.stderr, "fizzbot train: error: ")
    record("disk_full", {"tmpfs_kib": size_kb, "checkpoint_kib": round(checkpoint_bytes / 1024), "exit_status": proc.returncode,
                         "error": error.replace(str(runs), "<run.dir>")})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-5000:]
    assert error.startswith("fizzbot train: error: could not write ") and "No space left on device" in error, error
    (run_dir,) = run_folders(after / "full")
    folders = [p for p in run_dir.iterdir() if "checkpoint-" in p.name]
    complete = ckpt.checkpoints_of(run_dir)
    record("disk_full_checkpoints", {"left": sorted(p.name for p in folders), "complete": [step for step, _, _ in complete]})
    assert len(complete) >= 1 and not (run_dir / ckpt.COMPLETED).exists()
    # Nothing that looks complete but is not: every checkpoint folder left is whole, no partial copy stays.
    assert sorted(folders) == sorted(path for _, path, _ in complete), [p.name for p in folders]
    latest = ckpt.find_latest(after, "full")
    model, tokenizer, _ = load_for_inference(latest, device=torch.device("cpu"))
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


# --- a weight file cut short in the newest checkpoint ----------------------------------------------------------


def test_a_truncated_weight_file_in_the_newest_checkpoint_is_skipped_or_refused(tiny_checkpoint, tmp_path):
    from fizzbot.artifacts import checkpoint as ckpt
    from fizzbot.config import load_config
    from fizzbot.serve.app import resolve_model_dir

    run = tmp_path / "runs" / "cut" / "20250101-000000"
    older, newest = run / "checkpoint-40", run / "checkpoint-80"
    shutil.copytree(tiny_checkpoint, older)
    shutil.copytree(tiny_checkpoint, newest)
    manifest = json.loads((newest / ckpt.MANIFEST).read_text())
    manifest.update(step=80, val_loss=manifest["val_loss"] - 1.0)  # the newest and the best: what --latest would take
    (newest / ckpt.MANIFEST).write_text(json.dumps(manifest))
    weights = newest / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)

    def fizzbot(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fizzbot.cli", *args], env=cli_env(), capture_output=True, text=True, timeout=300)

    latest = fizzbot("generate", "--latest", "--speaker", "pixelpaws", "--content", "hi", "--turns", "1", f"run.dir={tmp_path / 'runs'}",
                     "generate.device=cpu")
    assert latest.returncode == 0, latest.stderr[-2000:]
    assert f"skipping {newest}: model.safetensors is" in latest.stderr and "the manifest says" in latest.stderr
    assert resolve_model_dir(load_config(None, [f"run.dir={tmp_path / 'runs'}"])) == str(older.resolve())

    record("truncated_weights", {"latest_says": next(line for line in latest.stderr.splitlines() if "skipping" in line).replace(str(tmp_path), "<tmp>")})
    for args in (["generate", "--model-dir", str(newest), "--speaker", "pixelpaws", "--content", "hi"],
                 ["serve", f"serve.model_dir={newest}"]):
        refused = fizzbot(*args)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
        assert error_line(refused.stderr, f"fizzbot {args[0]}: error: ") == (f"fizzbot {args[0]}: error: {newest}: not a complete checkpoint: model.safetensors is "
                             f"{weights.stat().st_size:,} bytes, the manifest says {manifest['files']['model.safetensors']:,} "
                             "(cut short or changed); not loading it")
