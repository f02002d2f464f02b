"""The documented commands work as written: every command of the README's shell blocks (and its Python
snippet) and of the headers of cluster.yaml and k8s/*.yaml is taken from those files, and each one
that can run here runs, as written, from a fresh `git clone` of this repository.

They run in a sandbox of their own: a user, mount, network and PID namespace (`unshare`), so that
`ray start --head` takes its default ports (6379, 8265) and `fizzbot serve` its 8000 on a loopback
of its own, /tmp/ray and $HOME are fresh (a new user's), other Ray clusters on the machine are
neither seen nor touched, and everything started inside dies with the namespace.

Each command's plan is in PLANS: run it as written, run it as written with overrides appended that
only shorten training (this suite has minutes, not the hour `configs/train_cpu.yaml` asks for), run
it after making the placeholder paths it names, expect it to fail with a one-line error (a GPU
config on this CPU machine), or skip it with the reason (AWS, Kubernetes, a fresh .venv).
`test_every_documented_command_has_a_plan` fails when the files and PLANS drift apart.

The clone is of the repository's current state: HEAD plus uncommitted changes to tracked files
(`git stash create`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Shortens training only: the same configs, models and stages, a few steps.
SHORT = "training.max_steps=4 training.save_steps=4 training.eval_steps=4 training.eval_max_batches=2 training.log_steps=2"


@dataclass(frozen=True)
class Plan:
    how: str  # "run", "shortened", "placeholders", "fails", "skip"
    why: str = ""


RUN, SHORTENED = Plan("run"), Plan("shortened", f"appends {SHORT}")
AWS = Plan("skip", "needs AWS credentials and the cluster of cluster.yaml")
K8S = Plan("skip", "needs a Kubernetes cluster with the KubeRay operator")

PLANS: dict[tuple[str, str], Plan] = {
    ("README.md", "make demo"): Plan("skip", "creates .venv and installs every dependency (GBs of wheels); the suite runs in an installed environment, and the commands below are the stack `make demo` runs"),
    ("README.md", "make test"): Plan("skip", "runs this suite"),
    ("README.md", "fizzbot demo-data --output data/demo-corpus"): RUN,
    ("README.md", "fizzbot prepare --input data/demo-corpus --output data/prepared"): RUN,
    ("README.md", "fizzbot train --config configs/train_cpu.yaml data.path=data/prepared"): SHORTENED,
    ("README.md", 'fizzbot generate --latest --speaker pixelpaws --content "hey everyone" --turns 4'): RUN,
    ("README.md", "fizzbot serve --config configs/serve.yaml"): RUN,
    ("README.md", "fizzbot prepare --input exports/ --output data/prepared-2 data.speaker_map=data/prepared-1"):
        Plan("placeholders", "exports/ is the demo corpus, data/prepared-1 an earlier prepare of it"),
    ("README.md", "fizzbot prepare --input exports/ --output data/prepared 'data.exclude_speakers=[\"alice\", \"1234567890\"]'"):
        Plan("placeholders", "exports/ is the demo corpus"),
    ("README.md", "python: from openai import OpenAI"): RUN,
    ("README.md", "curl -s localhost:8000/v1/generate -H 'content-type: application/json' -d '{\"context\": [{\"username\": "
                  "\"byteberry\", \"content\": \"how do I mock the search client?\"}], \"turns\": 3, \"seed\": 1}'"): RUN,
    ("README.md", "ray get-auth-token --generate > /dev/null"): RUN,
    ("README.md", "export RAY_AUTH_MODE=token"): Plan("run", "kept in the environment of the commands after it, as a shell keeps it"),
    ("README.md", "ray start --head"): RUN,
    ("README.md", "ray job submit --working-dir . -- python jobs/pipeline.py --config configs/demo.yaml"): SHORTENED,
    ("README.md", "ray job submit --working-dir . -- python jobs/prepare.py --config configs/demo.yaml"): RUN,
    ("README.md", "ray job submit --working-dir . -- python jobs/train.py --config configs/train_gpu_qlora.yaml"):
        Plan("fails", "a GPU config on a machine without one: the job must fail with one line naming training.use_gpu"),
    ("README.md", "ray job submit --working-dir . -- python jobs/serve.py --config configs/serve.yaml"): RUN,
    ("README.md", "ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/pipeline.py "
                  "--config configs/train_gpu_qlora.yaml 'data.inputs=[\"/mnt/shared/exports\"]' "
                  "data.output=/mnt/shared/prepared run.dir=/mnt/shared/runs training.wait_for_gpus=true"):
        Plan("skip", "needs the AWS cluster's GPU workers and its /mnt/shared; tests/test_jobs.py submits the same job with absolute paths"),
    ("README.md", "fizzbot bot --config configs/bot_irc.yaml bot.irc.host=127.0.0.1 bot.irc.port=6667 bot.irc.tls=false "
                  "'bot.channels=[\"#demo\"]' bot.log_dir=data/channel-logs"):
        Plan("skip", "a bot that runs until an owner stops it, on an IRC server: tests/test_bot.py runs this command against a "
                     "real IRC server (miniircd) and a real endpoint, and stops it with the owner's command"),
    ("README.md", "fizzbot update --latest --input data/channel-logs update.serve_app=fizzbot"):
        Plan("skip", "needs the channel logs the bot wrote: tests/test_update.py runs the same update and its promotion "
                     "into a running app while clients keep asking"),
    ("README.md", "fizzbot eval --latest"): RUN,
    ("README.md", "ray job submit --working-dir . -- python jobs/eval.py --config configs/demo.yaml --latest"):
        Plan("skip", "the evaluation above as a Ray job; it needs the demo's run under runs/demo (an hour of this suite's time "
                     "with `make demo`): the job machinery itself runs with the jobs of \"Ray jobs and clusters\""),
    ("README.md", "fizzbot serve --config configs/serve.yaml serve.adapters.ubuntu=runs/ubuntu/<stamp>/checkpoint-600 "
                  "serve.adapters.gamers=runs/gamers/<stamp>/checkpoint-400"):
        Plan("skip", "placeholders for two communities' LoRA checkpoints of one base: tests/test_adapters.py serves two "
                     "adapters trained on two corpora through the same settings"),
    ("README.md", "curl -s localhost:8000/v1/models"):
        Plan("skip", "part of the two-adapter example above (tests/test_adapters.py checks /v1/models lists both)"),
    ("README.md", "curl -s localhost:8000/v1/generate -d '{\"model\": \"gamers\", \"context\": [...]}' -H "
                  "'content-type: application/json'"):
        Plan("skip", "part of the two-adapter example above (`[...]` is a placeholder; tests/test_adapters.py picks adapters by `model`)"),
    ("cluster.yaml", "ray up -y cluster.yaml"): AWS,
    ("cluster.yaml", "ray rsync-up cluster.yaml ./my-exports/ /mnt/shared/exports/"): AWS,
    ("cluster.yaml", "ray dashboard cluster.yaml"): AWS,
    ("cluster.yaml", "ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/pipeline.py "
                     "--config configs/train_gpu_qlora.yaml 'data.inputs=[\"/mnt/shared/exports\"]' "
                     "data.output=/mnt/shared/prepared run.dir=/mnt/shared/runs training.wait_for_gpus=true"): AWS,
    ("cluster.yaml", "ray job logs --address http://127.0.0.1:8265 --follow <submission id>"): AWS,
    ("cluster.yaml", "ray attach cluster.yaml -p 8000"): AWS,
    ("cluster.yaml", "ray down -y cluster.yaml"): AWS,
    ("k8s/rayjob.yaml", "kubectl apply -f k8s/rayjob.yaml -l app.kubernetes.io/component=storage"): K8S,
    ("k8s/rayjob.yaml", "kubectl run fizzbot-upload"): K8S,
    ("k8s/rayjob.yaml", "kubectl cp ./my-exports fizzbot-upload:/shared/exports"): K8S,
    ("k8s/rayjob.yaml", "kubectl exec fizzbot-upload -- chown -R 1000:1000 /shared && kubectl delete pod fizzbot-upload"): K8S,
    ("k8s/rayjob.yaml", "kubectl apply -f k8s/rayjob.yaml"): K8S,
    ("k8s/rayjob.yaml", "kubectl get rayjob fizzbot-pipeline -w"): K8S,
    ("k8s/rayjob.yaml", "kubectl logs -f job/fizzbot-pipeline"): K8S,
    ("k8s/rayservice.yaml", "kubectl apply -f k8s/rayservice.yaml"): K8S,
    ("k8s/rayservice.yaml", "kubectl get rayservice fizzbot -w"): K8S,
    ("k8s/rayservice.yaml", "kubectl port-forward svc/fizzbot-serve-svc 8000:8000"): K8S,
    ("k8s/rayservice.yaml", "curl -s 127.0.0.1:8000/v1/models"): Plan("run", "against `fizzbot serve` here, where the port-forward would lead"),
}


# --- reading the commands out of the files ------------------------------------------------------------

PROGRAMS = ("ray", "fizzbot", "make", "kubectl", "curl", "serve", "docker", "python")


def strip_comment(line: str) -> str:
    """`cmd args  # comment` -> `cmd args` (a # inside quotes stays)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def open_quote(text: str) -> bool:
    quote = None
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
    return quote is not None


def logical_lines(lines: list[str]) -> list[str]:
    """Shell lines with `\\` continuations (and quotes open across lines) joined by one space."""
    commands, current = [], ""
    for raw in lines:
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        line = strip_comment(line) if not open_quote(current) else line
        joined = f"{current} {line}".strip() if current else line
        if joined.endswith("\\"):
            current = joined[:-1].rstrip()
        elif open_quote(joined):
            current = joined
        else:
            commands.append(re.sub(r"\s+", " ", joined))
            current = ""
    return commands


def readme_commands(text: str) -> list[str]:
    found = []
    for language, body in re.findall(r"```(bash|python)\n(.*?)```", text, re.S):
        if language == "python":
            found.append("python: " + body.strip().splitlines()[0])
        else:
            found.extend(logical_lines(body.splitlines()))
    return found


def header_commands(text: str) -> list[str]:
    """Commands in a YAML file's header comment: `#   <program> ...` lines and their continuations."""
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line[1:])
    starts = re.compile(rf"^\s{{2,}}({'|'.join(PROGRAMS)})\s")
    commands, block = [], []
    for line in header:
        joined = " ".join(strip_comment(part) for part in block)
        if starts.match(line) and not (block and (joined.endswith("\\") or open_quote(joined))):
            if block:
                commands.extend(logical_lines(block))
            block = [line]
        elif block and line.startswith("     ") and not line.strip().startswith("#"):
            block.append(line)
        elif block:
            commands.extend(logical_lines(block))
            block = []
    if block:
        commands.extend(logical_lines(block))
    return commands


def documented_commands(root: Path = REPO) -> list[tuple[str, str]]:
    found = [("README.md", c) for c in readme_commands((root / "README.md").read_text())]
    for name in ("cluster.yaml", "k8s/rayjob.yaml", "k8s/rayservice.yaml"):
        for command in header_commands((root / name).read_text()):
            if command.startswith("kubectl run "):
                command = " ".join(command.split()[:3])  # its --overrides JSON spans four lines
            found.append((name, command))
    return found


def test_every_documented_command_has_a_plan():
    documented = documented_commands()
    assert len(documented) == len(set(documented)), "a command is documented twice in one file"
    assert set(documented) == set(PLANS), (
        f"documented without a plan: {sorted(set(documented) - set(PLANS))}\n"
        f"planned but no longer documented: {sorted(set(PLANS) - set(documented))}"
    )
    runnable = [key for key, plan in PLANS.items() if plan.how != "skip"]
    assert len(runnable) >= 14


# --- the sandbox ------------------------------------------------------------------------------------------


class Sandbox:
    """A user + mount + network + PID namespace holding a fresh clone: see the module's docstring."""

    def __init__(self, root: Path):
        self.root = root
        self.clone = root / "fizzbot"
        self.home = root / "home"
        self.home.mkdir()
        self.holder: subprocess.Popen | None = None
        self.exported: dict[str, str] = {}
        self.init_pid = 0
        self.log: list[dict] = []

    def start(self) -> None:
        script = "ip link set lo up && mkdir -p /tmp/ray && mount -t tmpfs tmpfs /tmp/ray && exec sleep 3600"
        self.holder = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--mount", "--net", "--pid", "--fork", "--mount-proc", "sh", "-c", script])
        import psutil

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            children = psutil.Process(self.holder.pid).children()
            if children and "sleep" in " ".join(children[0].cmdline()):
                self.init_pid = children[0].pid
                break
            time.sleep(0.05)
        assert self.init_pid, "the sandbox did not start"
        # HEAD plus uncommitted changes of tracked files, cloned as a user would clone it.
        snapshot = subprocess.run(["git", "stash", "create"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        subprocess.run(["git", "clone", "-q", "--shared", str(REPO), str(self.clone)], check=True, timeout=120)
        if snapshot:
            subprocess.run(["git", "checkout", "-q", snapshot], cwd=self.clone, check=True)

    def env(self) -> dict:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "FIZZBOT_", "PYTEST_"))}
        # `ray start` and the job's `python` come from the environment fizzbot is installed in (the
        # README: an activated .venv); the clone's package is the one imported.
        return {**keep, "HOME": str(self.home), "PATH": f"{BIN}{os.pathsep}{keep.get('PATH', '')}", "PYTHONPATH": str(self.clone),
                **self.exported}

    def export(self, shell: str) -> None:
        """`export NAME=value`: the variable stays set for every later command, as in one shell."""
        name, _, value = shell.removeprefix("export ").partition("=")
        self.exported[name] = value
        self.log.append({"command": shell, "rc": 0, "seconds": 0.0})

    def command(self, shell: str) -> list[str]:
        return ["nsenter", "--target", str(self.init_pid), "--user", "--mount", "--net", "--pid", "--preserve-credentials",
                "bash", "-c", f"cd {self.clone} && {shell}"]

    def run(self, shell: str, timeout: float = 300, stdin: str | None = None) -> subprocess.CompletedProcess:
        started = time.perf_counter()
        proc = subprocess.run(self.command(shell), env=self.env(), capture_output=True, text=True, timeout=timeout, input=stdin)
        self.log.append({"command": shell, "rc": proc.returncode, "seconds": round(time.perf_counter() - started, 1)})
        return proc

    def background(self, shell: str, log: Path) -> subprocess.Popen:
        return subprocess.Popen(self.command(shell), env=self.env(), stdout=open(log, "w"), stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.init_pid:
            try:
                os.kill(self.init_pid, signal.SIGKILL)  # the namespace's init: the kernel ends everything in it
            except ProcessLookupError:
                pass
        if self.holder is not None:
            self.holder.wait(timeout=30)


def sandbox_available() -> str | None:
    for tool in ("unshare", "nsenter", "ip", "git"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "--net", "--pid", "--fork", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"namespaces are not allowed here: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    reason = sandbox_available()
    if reason:
        pytest.skip(reason)
    box = Sandbox(tmp_path_factory.mktemp("documented"))
    box.start()
    try:
        yield box
    finally:
        box.stop()
        print("\n" + "\n".join(f"{entry['seconds']:6.1f}s rc={entry['rc']} {entry['command'][:150]}" for entry in box.log))
        out = os.environ.get("FIZZBOT_RELIABILITY_OUT")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "documented_commands.json").write_text(json.dumps(box.log, indent=2) + "\n")


def plan_of(source: str, command: str) -> Plan:
    return PLANS[(source, command)]


def as_run(source: str, command: str) -> str:
    """The command line the sandbox runs: as written, plus the shortening overrides where planned."""
    plan = plan_of(source, command)
    assert plan.how in ("run", "shortened", "placeholders", "fails"), (command, plan)
    return f"{command} {SHORT}" if plan.how == "shortened" else command


def ok(proc: subprocess.CompletedProcess) -> str:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "Traceback (most recent call last)" not in output, output[-4000:]
    return output


# --- the README's stages, one by one ---------------------------------------------------------------------


@pytest.mark.slow
def test_the_pipeline_stage_by_stage_as_written(sandbox):
    readme = "README.md"
    ok(sandbox.run(as_run(readme, "fizzbot demo-data --output data/demo-corpus")))
    assert len(list((sandbox.clone / "data/demo-corpus").iterdir())) == 4
    out = ok(sandbox.run(as_run(readme, "fizzbot prepare --input data/demo-corpus --output data/prepared")))
    assert "prepared" in out and (sandbox.clone / "data/prepared/train.jsonl").stat().st_size > 0
    out = ok(sandbox.run(as_run(readme, "fizzbot train --config configs/train_cpu.yaml data.path=data/prepared"), timeout=600))
    assert "trained to step 4" in out
    out = ok(sandbox.run(as_run(readme, 'fizzbot generate --latest --speaker pixelpaws --content "hey everyone" --turns 4')))
    # Four messages, one `name: text` line each, unless the 4-step model wrote its end-of-sequence
    # token first: then the command says how many it gives.
    from fizzbot.chat.speakers import OTHERS_NAME, SpeakerMap

    smap = SpeakerMap.from_json(json.loads((sandbox.clone / "data/prepared/speaker_map.json").read_text()))
    names = [s.username for s in smap.speakers] + [OTHERS_NAME]
    lines = [line for line in out.splitlines() if any(line.startswith(f"{name}: ") for name in names)]
    cut_short = re.search(r"fizzbot generate: (\d) of 4 messages: ", out)
    assert len(lines) >= 4 or (cut_short and len(lines) >= int(cut_short.group(1)) >= 1), out[-2000:]

    # `fizzbot serve` in the foreground, as a user runs it; the README's Python snippet and the
    # RayService header's curl ask it; Ctrl-C (SIGINT) ends it.
    log = sandbox.root / "serve.log"
    serve = sandbox.background("echo $$ > serve.pid; exec " + as_run(readme, "fizzbot serve --config configs/serve.yaml"), log)
    try:
        deadline = time.monotonic() + 300
        while "fizzbot serving" not in log.read_text() and serve.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "fizzbot serving" in log.read_text(), log.read_text()[-3000:]
        snippet = re.search(r"```python\n(.*?)```", (sandbox.clone / readme).read_text(), re.S).group(1)
        assert snippet.startswith("from openai import OpenAI")
        ok(sandbox.run("python -", stdin=snippet + "\nprint('NAME', reply.choices[0].message.name)\n"))
        curl = next(c for source, c in documented_commands(sandbox.clone) if source == readme and c.startswith("curl "))
        answer = json.loads(ok(sandbox.run(as_run(readme, curl))))
        assert all(m["username"] for m in answer["messages"]), answer
        assert_turns_or_early_eos(answer, 3)
        models = json.loads(ok(sandbox.run(as_run("k8s/rayservice.yaml", "curl -s 127.0.0.1:8000/v1/models"))))
        assert models["data"][0]["id"] == "fizzbot"
    finally:
        sandbox.run("kill -INT $(cat serve.pid)")
        try:
            serve.wait(timeout=120)
        except subprocess.TimeoutExpired:
            serve.kill()
    assert "shutting down" in log.read_text() and serve.returncode == 0, log.read_text()[-3000:]

    # The commands with placeholder paths, once the placeholders exist.
    shutil.copytree(sandbox.clone / "data/demo-corpus", sandbox.clone / "exports")
    shutil.copytree(sandbox.clone / "data/prepared", sandbox.clone / "data/prepared-1")
    ok(sandbox.run(as_run(readme, "fizzbot prepare --input exports/ --output data/prepared-2 data.speaker_map=data/prepared-1")))
    stats = json.loads((sandbox.clone / "data/prepared-2/stats.json").read_text())
    assert stats["speakers"]["kept"] > 0 and stats["speakers"]["appended"] == 0
    ok(sandbox.run(as_run(readme, "fizzbot prepare --input exports/ --output data/prepared 'data.exclude_speakers=[\"alice\", \"1234567890\"]'")))
    stats = json.loads((sandbox.clone / "data/prepared/stats.json").read_text())
    assert stats["excluded"]["unmatched"] == ["1234567890", "alice"]


def assert_turns_or_early_eos(answer: dict, turns: int) -> None:
    """A documented request asks for `turns` messages with the model's EOS left on (as a user would):
    a young test model may end the conversation sooner, which the answer must then say."""
    count = len(answer["messages"])
    assert count == turns or (1 <= count < turns and answer["finish_reason"] == "eos"), answer


# --- Ray jobs on a `ray start --head` -------------------------------------------------------------------


def submitted(sandbox: Sandbox, command: str, timeout: float = 600) -> subprocess.CompletedProcess:
    deadline = time.monotonic() + 60
    while True:  # the job agent registers a few seconds after `ray start` returns
        proc = sandbox.run(command, timeout=timeout)
        if "No available agent" not in proc.stdout + proc.stderr or time.monotonic() > deadline:
            return proc
        time.sleep(3)


@pytest.mark.slow
def test_ray_jobs_on_a_started_head_as_written(sandbox):
    readme = "README.md"
    # When the stages above ran first, their `ray.init()` left a token in this HOME: the case the
    # first two lines of the README's block are for (without them `ray job submit` fails with
    # InvalidAuthToken); alone, this test shows they work on a fresh HOME too.
    ok(sandbox.run(as_run(readme, "ray get-auth-token --generate > /dev/null")))
    sandbox.export(as_run(readme, "export RAY_AUTH_MODE=token"))
    ok(sandbox.run(as_run(readme, "ray start --head"), timeout=180))
    # data/ is git-ignored, so the upload leaves it out: the pipeline job makes the demo corpus in its
    # working directory (Ray's copy of the upload), where the demo config's relative paths resolve.
    out = ok(submitted(sandbox, as_run(readme, "ray job submit --working-dir . -- python jobs/pipeline.py --config configs/demo.yaml")))
    assert "succeeded" in out and "demo corpus ->" in out and "serving: http://127.0.0.1:8000" in out
    workdir = re.search(r"\[job\] working directory (\S+)", out).group(1)
    assert re.search(rf"checkpoint: {re.escape(workdir)}/runs/demo/\S+/checkpoint-4", out), out[-3000:]
    health = sandbox.run("curl -s 127.0.0.1:8000/healthz")
    assert json.loads(health.stdout)["status"] == "ok"

    out = ok(submitted(sandbox, as_run(readme, "ray job submit --working-dir . -- python jobs/prepare.py --config configs/demo.yaml")))
    assert re.search(r"prepared \d+ train / \d+ val examples -> /\S+/data/demo-prepared", out), out[-3000:]

    failed = submitted(sandbox, as_run(readme, "ray job submit --working-dir . -- python jobs/train.py --config configs/train_gpu_qlora.yaml"))
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "failed" in output
    assert re.search(r"^jobs/train\.py: error: training\.use_gpu=true .*0 GPUs", output, re.M), output[-3000:]
    assert "Traceback" not in output, output[-3000:]

    out = ok(submitted(sandbox, as_run(readme, "ray job submit --working-dir . -- python jobs/serve.py --config configs/serve.yaml")))
    assert "fizzbot is serving at http://127.0.0.1:8000" in out
    answer = sandbox.run("curl -s -X POST 127.0.0.1:8000/v1/generate -H 'Content-Type: application/json' "
                         "-d '{\"context\": [{\"username\": \"pixelpaws\", \"content\": \"hey\"}], \"turns\": 2}'")
    assert_turns_or_early_eos(json.loads(answer.stdout), 2)
