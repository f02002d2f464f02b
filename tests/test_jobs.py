"""The pipeline as a user submits it: a real `ray start --head` with its job server, `ray job submit`
of jobs/pipeline.py on the demo data, and the deployed endpoint answering."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def free_ports(n: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


class RayHead:
    """A head node of our own on free ports, stopped by killing its processes only.

    `ray stop` would also stop every other Ray on the machine (this test session's own included).
    """

    def __init__(self, tmp: Path):
        (self.gcs, self.dashboard, self.agent_http, self.agent_grpc, self.metrics, self.client, self.runtime_env,
         self.node_manager, self.object_manager) = free_ports(9)
        self.tmp = tmp
        self.address = f"http://127.0.0.1:{self.dashboard}"

    def start(self) -> None:
        command = [
            RAY, "start", "--head", "--num-cpus=2", "--disable-usage-stats", "--include-dashboard=true",
            f"--port={self.gcs}", f"--dashboard-port={self.dashboard}", f"--dashboard-agent-listen-port={self.agent_http}",
            f"--dashboard-agent-grpc-port={self.agent_grpc}", f"--metrics-export-port={self.metrics}",
            f"--ray-client-server-port={self.client}", f"--runtime-env-agent-port={self.runtime_env}",
            f"--node-manager-port={self.node_manager}", f"--object-manager-port={self.object_manager}",
        ]
        # With RAY_AUTH_MODE=token the head refuses to start without a token: make one if this
        # machine has none yet (`ray get-auth-token --generate` keeps an existing one).
        subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True, timeout=60, env=self.env())
        subprocess.run(command, check=True, capture_output=True, timeout=120, env=self.env())

    def env(self) -> dict:
        env = dict(os.environ)
        # The job's `python` is looked up on the head's PATH: the environment fizzbot is installed in.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["RAY_AUTH_MODE"] = "token"  # `ray start --head` enables token auth: the client reads ~/.ray/auth_token
        env.pop("RAY_ADDRESS", None)
        return env

    def submit(self, *args: str, timeout: int) -> subprocess.CompletedProcess:
        deadline = time.monotonic() + 90
        while True:  # the job agent registers a few seconds after `ray start` returns
            proc = subprocess.run(
                [RAY, "job", "submit", "--address", self.address, "--working-dir", str(REPO), "--", *args],
                capture_output=True, text=True, timeout=timeout, env=self.env(), cwd=REPO,
            )
            if "No available agent" not in proc.stderr + proc.stdout or time.monotonic() > deadline:
                return proc
            time.sleep(3)

    def stop(self) -> None:
        import psutil

        marks = (f":{self.gcs}", f"--gcs_server_port={self.gcs}", f"--port={self.dashboard}")
        for process in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            if any(mark in cmdline for mark in marks) and process.pid != os.getpid():
                try:
                    process.send_signal(signal.SIGKILL)
                except psutil.Error:
                    pass
        current = Path("/tmp/ray/ray_current_cluster")
        if current.exists() and current.read_text().strip().endswith(f":{self.gcs}"):
            current.unlink()


@pytest.fixture
def ray_head(tmp_path):
    head = RayHead(tmp_path)
    head.start()
    try:
        yield head
    finally:
        head.stop()


def test_pipeline_job_on_a_started_head(ray_head, tmp_path):
    from fizzbot.data.demo import write_demo_corpus

    corpus = tmp_path / "corpus"
    write_demo_corpus(corpus, seed=0, days=6)
    serve_port = free_ports(1)[0]
    proc = ray_head.submit(
        "python", "jobs/pipeline.py", "--config", "configs/demo.yaml",
        f"data.inputs=[{corpus}]", f"data.output={tmp_path / 'prepared'}", f"run.dir={tmp_path / 'runs'}",
        "model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.num_heads=2", "model.tiny.num_kv_heads=2",
        "model.tiny.intermediate_size=128", "model.tiny.vocab_size=512", "training.max_steps=8", "training.eval_steps=8",
        "training.save_steps=8", "training.log_steps=4", f"serve.port={serve_port}",
        timeout=900,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "succeeded" in output
    checkpoints = list((tmp_path / "runs").glob("demo/*/checkpoint-8"))
    assert len(checkpoints) == 1
    assert (checkpoints[0] / "fizzbot_checkpoint.json").is_file() and (checkpoints[0] / "model.safetensors").is_file()
    assert (tmp_path / "prepared" / "train.jsonl").stat().st_size > 0
    # The Serve application outlives the job that deployed it.
    url = f"http://127.0.0.1:{serve_port}"
    assert requests.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"
    answer = requests.post(f"{url}/v1/generate", json={"context": [{"username": "pixelpaws", "content": "hey"}], "turns": 2, "seed": 0, "eos_stop": False}, timeout=120)
    assert answer.status_code == 200 and len(answer.json()["messages"]) == 2
