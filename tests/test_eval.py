"""`fizzbot eval` and the measures in training's evaluation, on real tiny models.

The context-gain measure must be able to fail: on a channel where the context decides the next
message (a word asked about is echoed back, partners take turns), a model trained on its real
contexts gains clearly from them, and the same model trained with every target paired with another
row's context gains nothing. Then `fizzbot eval` through the console script on that checkpoint: the
report renders, every number on the page is in eval.json, and its figures are training's own.
"""

from __future__ import annotations

import datetime as dt
import html.parser
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fizzbot.cli import main as cli_main
from fizzbot.config import DataConfig, load_config
from fizzbot.data.pipeline import prepare
from fizzbot.eval.report import fmt
from fizzbot.train.trainer import train

REPO = Path(__file__).resolve().parents[1]
WORDS = (
    "apple river candle forest marble pepper rocket saddle tunnel violin walnut yogurt anchor basket cactus dragon "
    "engine falcon garden hammer island jacket kettle ladder magnet needle orange pillow quartz rabbit salmon teapot "
    "umbrella velvet wizard zipper bottle carpet dolphin eagle feather guitar helmet igloo jungle koala lemon mirror "
    "napkin otter parrot pirate rhino spider tomato walrus"
).split()

# Learns to read its context within a few hundred steps (an untied head learns the echo fastest);
# a few seconds of one CPU thread.
ECHO_MODEL = [
    "model.base=tiny", "model.method=full", "model.tiny.vocab_size=512", "model.tiny.hidden_size=64",
    "model.tiny.num_layers=2", "model.tiny.num_heads=4", "model.tiny.num_kv_heads=4", "model.tiny.intermediate_size=128",
    "model.tiny.max_position_embeddings=128", "model.tiny.tie_word_embeddings=false", "training.max_seq_len=128",
    "training.num_workers=1", "training.threads_per_worker=1", "training.batch_size=32", "training.learning_rate=3e-3",
    "training.warmup_steps=10", "training.max_steps=250", "training.eval_steps=250", "training.save_steps=250",
    "training.log_steps=50", "training.eval_max_batches=null",
]


def write_echo_channel(path: Path, conversations: int = 400, seed: int = 0) -> None:
    """One channel (seed format) of short conversations two hours apart: in each, one of five pairs
    of users takes turns, the first asking about a word ("napkin?") and the other echoing it
    ("napkin!"). Ten users with eight speaker tokens: three share the long-tail token."""
    rng = random.Random(seed)
    users = [f"user{i}" for i in range(10)]
    when = dt.datetime(2025, 1, 6, 9, 0, tzinfo=dt.timezone.utc)
    lines = []
    for _ in range(conversations):
        pair = rng.randrange(5)
        word = rng.choice(WORDS)
        for turn in range(rng.randint(4, 8)):
            who, mark = (users[2 * pair], "?") if turn % 2 == 0 else (users[2 * pair + 1], "!")
            lines.append(json.dumps({"username": who, "content": f"{word}{mark}", "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ")}))
            when += dt.timedelta(seconds=20)
        when += dt.timedelta(hours=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def shuffle_contexts(prepared: Path, out: Path, seed: int = 0) -> Path:
    """The same folder with every training target paired with another training row's context."""
    out.mkdir(parents=True)
    for name in ("val.jsonl", "speaker_map.json"):
        shutil.copy(prepared / name, out / name)
    rows = [json.loads(line) for line in (prepared / "train.jsonl").read_text().splitlines()]
    contexts = [r["context"] for r in rows]
    random.Random(seed).shuffle(contexts)
    (out / "train.jsonl").write_text("".join(json.dumps({**r, "context": c}) + "\n" for r, c in zip(rows, contexts)))
    return out


@pytest.fixture(scope="module")
def echo(tmp_path_factory) -> dict[str, Path]:
    """The echo channel prepared (empty contexts included: openers, and windows of no messages, so
    that 'the context removed' is something the model has learned), and its shuffled twin."""
    root = tmp_path_factory.mktemp("echo")
    write_echo_channel(root / "corpus" / "echo.jsonl")
    prepared = root / "prepared"
    prepare(DataConfig(inputs=[str(root / "corpus")], output=str(prepared), path=str(prepared), val_split=0.1,
                       min_context_messages=0, max_context_messages=4, max_speakers=8), use_ray=False, report=False)
    return {"real": prepared, "shuffled": shuffle_contexts(prepared, root / "shuffled"), "root": root}


@pytest.fixture(scope="module")
def echo_runs(echo) -> dict:
    runs = {}
    for kind in ("real", "shuffled"):
        cfg = load_config(None, ECHO_MODEL + [f"data.path={echo[kind]}", f"run.dir={echo['root'] / 'runs'}", f"run.name={kind}"])
        runs[kind] = train(cfg, use_ray=False)
    return runs


def last_eval(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "eval"][-1]


def test_context_gain_is_clear_for_a_model_that_reads_its_context_and_nil_for_one_trained_on_shuffled_contexts(echo_runs):
    real, shuffled = last_eval(echo_runs["real"].run_dir), last_eval(echo_runs["shuffled"].run_dir)
    assert real["context_gain"] > 0.15, real
    assert abs(shuffled["context_gain"]) < 0.03, shuffled
    # The same targets in both: the measure differs by what the model learned, not by the rows.
    assert real["target_tokens"] == shuffled["target_tokens"] and real["rows"] == shuffled["rows"]
    # Who speaks next: a model that reads the turns beats the majority speaker; one that cannot, does not.
    assert real["named_speaker_acc"] > real["named_majority_acc"] + 0.2
    assert shuffled["named_speaker_acc"] < shuffled["named_majority_acc"] + 0.1


def test_training_logs_every_measure_to_metrics_and_tensorboard(echo_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = echo_runs["real"].run_dir
    figures = last_eval(run_dir)
    for key in ("val_loss", "no_context_loss", "context_gain", "unigram_loss", "bigram_loss", "speaker_acc", "majority_acc",
                "named_speaker_acc", "named_speaker_macro_f1", "named_majority_acc", "named_bigram_acc", "others_share"):
        assert figures[key] is not None, key
    assert figures["context_gain"] == pytest.approx(figures["no_context_loss"] - figures["val_loss"])
    assert 0 < figures["others_share"] < 1  # three users share the long-tail token
    start = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][0]
    assert start["kind"] == "start" and start["train_empty_context_share"] > 0.1
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"eval/context_gain", "eval/named_speaker_acc", "eval/bigram_loss", "eval/named_bigram_acc"} <= tags
    (point,) = events.Scalars("eval/context_gain")
    assert point.value == pytest.approx(figures["context_gain"], abs=1e-5)


# --- fizzbot eval --------------------------------------------------------------------------------------

EVAL_SIZES = ["eval.style_messages=4", "eval.style_min_messages=20", "eval.conversations=2", "eval.conversation_turns=3",
              "generate.max_new_tokens=8"]


@pytest.fixture(scope="module")
def evaluated(echo_runs) -> tuple[subprocess.CompletedProcess, Path]:
    """`fizzbot eval --model-dir CHECKPOINT` as a user runs it (the console script's module)."""
    checkpoint = echo_runs["real"].best_checkpoint
    proc = subprocess.run(
        [sys.executable, "-m", "fizzbot.cli", "eval", "--model-dir", str(checkpoint), *EVAL_SIZES],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        # Tiny matrices: one thread is fastest, and the cores are shared.
        env={**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"},
    )
    return proc, checkpoint / "eval"


class PageReader(html.parser.HTMLParser):
    """Visible text, image sources, and whether every element that opens also closes, in order."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.text, self.images, self.hidden = [], [], [], [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag in self.VOID:
            return
        self.stack.append(tag)
        self.hidden += tag in ("style", "script", "title")

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        self.hidden -= tag in ("style", "script", "title")

    def handle_data(self, data):
        if not self.hidden:
            self.text.append(data)


NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")


def numbers_in_json(value, out: set[str]) -> set[str]:
    if isinstance(value, dict):
        for v in value.values():
            numbers_in_json(v, out)
    elif isinstance(value, list):
        for v in value:
            numbers_in_json(v, out)
    elif isinstance(value, str):
        out.update(NUMBER.findall(value))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out.update({fmt(value).lstrip("-"), str(value).lstrip("-")})
    return out


def test_eval_command_writes_a_report_that_renders_with_every_number_from_eval_json(evaluated):
    proc, folder = evaluated
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"report: {folder / 'report.html'}" in proc.stdout
    doc = json.loads((folder / "eval.json").read_text())
    reader = PageReader()
    reader.feed((folder / "report.html").read_text(encoding="utf-8"))
    reader.close()
    assert not reader.errors and not reader.stack, (reader.errors, reader.stack)
    assert set(reader.images) == {"speakers.png", "confusion.png", "loss_by_context.png", "style.png"}
    for name in reader.images:
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    text = " ".join(reader.text)
    shown = NUMBER.findall(text)
    allowed = numbers_in_json(doc, set())
    assert len(shown) > 100, "the page shows too few figures"
    assert not [n for n in shown if n not in allowed], sorted(set(n for n in shown if n not in allowed))
    # The page shows the figures that matter (as fmt writes them).
    for key in ("context_gain", "named_speaker_acc", "named_bigram_acc", "named_majority_acc", "bigram_loss", "val_loss"):
        assert fmt(doc["figures"][key]) in shown, key
    assert doc["style"]["speakers"] >= 2 and len(doc["conversations"]) == 2
    assert not list(folder.parent.glob(".eval.partial-*"))


def test_eval_agrees_with_trainings_own_evaluation_of_the_same_checkpoint(echo_runs, evaluated):
    """Same rows, same model: the same figures, though eval tokenises only the newest context
    message of each training row for its baselines and scores in its own batches."""
    proc, folder = evaluated
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = json.loads((folder / "eval.json").read_text())["figures"]
    training = last_eval(echo_runs["real"].run_dir)
    for key in ("val_loss", "no_context_loss", "context_gain", "unigram_loss", "bigram_loss", "speaker_acc",
                "named_speaker_acc", "named_speaker_macro_f1", "named_majority_acc", "named_bigram_acc", "others_share"):
        assert ours[key] == pytest.approx(training[key], abs=1e-4), key
    assert ours["rows"] == training["rows"]


def test_eval_help_names_its_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["eval", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model-dir", "--latest", "--data", "--output"):
        assert flag in out


def test_eval_refuses_data_whose_speakers_are_other_people(echo_runs, demo_prepared, capsys):
    code = cli_main(["eval", "--model-dir", str(echo_runs["real"].best_checkpoint), "--data", str(demo_prepared),
                     "--output", str(demo_prepared.parent / "never")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "speaker map does not match the checkpoint's" in err and str(demo_prepared) in err
    assert not (demo_prepared.parent / "never").exists()


def test_eval_of_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert cli_main(["eval", "--model-dir", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip() == f"fizzbot eval: error: model directory {tmp_path / 'nothing'} does not exist"
