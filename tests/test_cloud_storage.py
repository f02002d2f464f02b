"""Runs, data and checkpoints in an S3 bucket, against a real S3 API on localhost (moto's server, as
boto3 and pyarrow talk to any S3-compatible store): two Ray Train CPU workers train into
s3://<bucket>/runs from data in the bucket, the run dies and the same command resumes it from the
bucket on a machine without the local mirror; `fizzbot generate --latest run.dir=s3://...` and the
Serve deployment use the best complete checkpoint there, fetched into a local cache."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from fizzbot.artifacts import checkpoint as ckpt
from fizzbot.artifacts import storage
from fizzbot.config import load_config
from fizzbot.train.trainer import train
from test_train import REPO, TINY, prepared, ray_train_workers, read_metrics  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow
BUCKET = "fizzbot-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free port, the standard AWS variables pointing at it, one bucket, and a
    fizzbot cache of the test's own."""
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "FIZZBOT_CACHE": str(tmp_path_factory.mktemp("cache")),
    }
    patch = pytest.MonkeyPatch()
    for name, value in env.items():
        patch.setenv(name, value)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "moto's server did not start"
                time.sleep(0.2)
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        patch.undo()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


def upload(client, folder: Path, prefix: str) -> str:
    for path in sorted(folder.iterdir()):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.name}")
    return f"s3://{BUCKET}/{prefix}"


@pytest.fixture(scope="module")
def cloud_run(ray_local, s3, prepared):
    """Train into the bucket until a checkpoint is there, kill a worker (no restarts allowed: the run
    dies), forget the local mirror, and run the same command again."""
    data = upload(s3, prepared, "data/prepared")
    runs = f"s3://{BUCKET}/runs"
    overrides = [f"data.path={data}", f"run.dir={runs}", *TINY, "run.name=cloud", "model.method=full",
                 "training.num_workers=2", "training.max_steps=40", "training.save_steps=4", "training.eval_steps=4",
                 "training.eval_max_batches=1", "training.log_steps=4", "training.keep_checkpoints=2",
                 "training.learning_rate=3e-3"]
    outcome: dict = {}

    def first() -> None:
        try:
            outcome["result"] = train(load_config(None, overrides + ["training.max_failures=0"]), use_ray=True)
        except BaseException as exc:  # the run dies: that is the point
            outcome["error"] = exc

    thread = threading.Thread(target=first, daemon=True)
    thread.start()
    deadline = time.monotonic() + 240
    found = None
    while found is None and thread.is_alive() and time.monotonic() < deadline:
        try:
            found = ckpt.find_latest(runs, "cloud")
        except FileNotFoundError:
            time.sleep(0.2)
    assert found is not None and thread.is_alive(), f"no checkpoint in the bucket before the run ended: {outcome}"
    workers = ray_train_workers()
    assert len(workers) == 2
    os.kill(workers[-1].pid, signal.SIGKILL)
    thread.join(timeout=180)
    assert not thread.is_alive() and "error" in outcome, f"the run should have died: {outcome}"
    (run,) = ckpt.run_dirs(runs, "cloud")
    assert not storage.exists(storage.join(run, ckpt.COMPLETED))
    killed_at = ckpt.checkpoints_of(run)[-1][0]
    shutil.rmtree(os.environ["FIZZBOT_CACHE"])  # another machine: no local mirror, no cached data
    result = train(load_config(None, overrides + ["training.max_failures=1"]), use_ray=True)
    return {"result": result, "runs": runs, "run": run, "killed_at": killed_at}


def test_a_run_in_a_bucket_resumes_after_it_died(cloud_run):
    result, run = cloud_run["result"], cloud_run["run"]
    assert result.location == run and str(run).startswith(f"s3://{BUCKET}/runs/cloud/")
    assert ckpt.run_dirs(cloud_run["runs"], "cloud") == [run], "the same run, no new one"
    assert result.final_step == 40
    starts = [m for m in read_metrics(result.run_dir) if m["kind"] == "start"]
    # From the newest checkpoint Ray Train recorded, or, killed before it recorded one, the newest complete one.
    assert 0 < starts[-1]["resumed_from_step"] <= cloud_run["killed_at"]
    # Checkpoints, the driver's files and the completion marker are in the bucket.
    steps = [s for s, _, _ in ckpt.checkpoints_of(run)]
    assert 40 in steps and len(steps) <= 3
    manifest = ckpt.read_manifest(storage.join(run, "checkpoint-40"))
    assert {"rng-rank0.pt", "rng-rank1.pt", "model.safetensors"} <= set(manifest["files"])
    for name in (ckpt.COMPLETED, "config.yaml", "fizzbot_run.json", "tokenizer/tokenizer_config.json", "metrics.jsonl"):
        assert storage.is_file(storage.join(run, name)), name
    assert str(result.best_checkpoint).startswith(str(run))


def test_latest_on_a_bucket_takes_only_complete_checkpoints(cloud_run, s3):
    run, best = cloud_run["run"], cloud_run["result"].best_checkpoint
    assert ckpt.find_latest(cloud_run["runs"]) == best
    # A newer checkpoint whose upload stopped half way: a manifest, one listed file missing.
    key = best[len(f"s3://{BUCKET}/"):]
    torn = run[len(f"s3://{BUCKET}/"):] + "/checkpoint-999"
    s3.copy_object(Bucket=BUCKET, Key=f"{torn}/{ckpt.MANIFEST}", CopySource={"Bucket": BUCKET, "Key": f"{key}/{ckpt.MANIFEST}"})
    s3.copy_object(Bucket=BUCKET, Key=f"{torn}/model.safetensors", CopySource={"Bucket": BUCKET, "Key": f"{key}/model.safetensors"})
    assert not ckpt.is_complete(f"s3://{BUCKET}/{torn}")
    assert ckpt.find_latest(cloud_run["runs"]) == best
    with pytest.raises(FileNotFoundError, match="not a complete fizzbot checkpoint"):
        ckpt.fetch_checkpoint(f"s3://{BUCKET}/{torn}")


def test_generate_latest_reads_the_bucket(cloud_run):
    command = [sys.executable, "-m", "fizzbot.cli", "generate", "--latest", f"run.dir={cloud_run['runs']}",
               "--context-file", "/dev/null", "--turns", "2", "--seed", "0", "--max-new-tokens", "16", "generate.device=cpu"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=REPO, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    assert 1 <= len(lines) <= 2 and all(": " in l for l in lines), proc.stdout
    cached = storage.cache_dir("checkpoints", str(cloud_run["result"].best_checkpoint))
    assert ckpt.is_complete(cached)


def test_serve_from_the_bucket(cloud_run):
    from ray import serve

    from fizzbot.pipeline import wait_healthy
    from fizzbot.serve.app import run_server

    port = free_port()
    cfg = load_config(None, [f"run.dir={cloud_run['runs']}", f"serve.port={port}", "generate.device=cpu",
                             "serve.max_new_tokens=16"])
    shutil.rmtree(Path(os.environ["FIZZBOT_CACHE"]) / "checkpoints", ignore_errors=True)
    try:
        url = run_server(cfg, name="cloud", route_prefix="/cloud")
        wait_healthy(url)
        models = requests.get(f"{url}/v1/models", timeout=10).json()
        assert models["data"][0]["root"] == cloud_run["result"].best_checkpoint  # served from the bucket
        response = requests.post(f"{url}/v1/generate", json={"context": [], "turns": 2, "seed": 1, "eos_stop": False}, timeout=120)
        assert response.status_code == 200, response.text
        assert len(response.json()["messages"]) == 2
        # The replica fetched the checkpoint into the (forwarded) cache, checked against its manifest.
        assert ckpt.is_complete(storage.cache_dir("checkpoints", str(cloud_run["result"].best_checkpoint)))
    finally:
        serve.shutdown()
