"""What a run depends on and what it resumes: the split of a single JSONL by time within each channel,
evaluation on a seeded sample spanning all lengths, resuming only when the settings and the data
match (`run.resume` / `--resume`), speaker maps that disagree, and the manifest of a checkpoint
that several workers wrote (DeepSpeed's shards included)."""

from __future__ import annotations

import json
import random
from collections import Counter
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fizzbot.artifacts import checkpoint as ckpt
from fizzbot.cli import main as cli_main
from fizzbot.config import ConfigError, load_config
from fizzbot.train import loop
from fizzbot.train.data import plan_evaluation
from fizzbot.train.inputs import resolve_data, split_rows
from fizzbot.train.runs import training_signature
from fizzbot.train.trainer import train
from test_train import TINY, prepared, read_metrics, steps_of, tiny_config  # noqa: F401  (fixture)


# --- a single JSONL: split by time within each channel ----------------------------------------------


@pytest.fixture(scope="module")
def single_jsonl(prepared, tmp_path_factory) -> Path:
    """The prepared train and val rows as one shuffled JSONL (the original tool's training_examples.jsonl)."""
    folder = tmp_path_factory.mktemp("single")
    lines = (prepared / "train.jsonl").read_text().splitlines() + (prepared / "val.jsonl").read_text().splitlines()
    random.Random(0).shuffle(lines)
    (folder / "training_examples.jsonl").write_text("\n".join(lines) + "\n")
    shutil.copy(prepared / "speaker_map.json", folder)
    return folder / "training_examples.jsonl"


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_single_jsonl_is_split_by_time_within_each_channel(single_jsonl, tmp_path):
    cfg = load_config(None, [f"data.path={single_jsonl}", "data.val_split=0.1"])
    data = resolve_data(cfg, tmp_path)
    train_rows, val_rows = rows_of(data.train_path), rows_of(data.val_path)
    everything = rows_of(single_jsonl)
    assert len(train_rows) + len(val_rows) == len(everything)
    assert 0.08 < len(val_rows) / len(everything) < 0.13
    channels = {r["channel"] for r in everything}
    for channel in channels:
        train_ts = [r["ts"] for r in train_rows if r["channel"] == channel]
        val_ts = [r["ts"] for r in val_rows if r["channel"] == channel]
        assert val_ts, f"channel {channel} holds nothing out"
        assert max(train_ts) < min(val_ts), channel  # validation is each channel's latest stretch
    # No validation target appears in a training context (of the targets whose text occurs once in
    # the corpus: the demo repeats its phrases, so a shared text is not always the same message).
    contexts = "\n".join(r["context"] for r in train_rows)
    counts = Counter(r["target"] for r in everything)
    distinctive = [r["target"] for r in val_rows if counts[r["target"]] == 1]
    assert len(distinctive) > 20
    leaked = [t for t in distinctive if t in contexts]
    assert not leaked, leaked[:3]


def test_rows_without_timestamps_are_split_by_line_order_within_their_channel():
    rows = [{"channel": "a" if i % 3 else "b", "target": f"<S0> {i} <EOT>"} for i in range(30)]
    train, val = split_rows(rows, 0.2)
    for channel in "ab":
        mine = [i for i, r in enumerate(rows) if r["channel"] == channel]
        held = [i for i in val if rows[i]["channel"] == channel]
        assert held == mine[-len(held):] and held
    # Rows at the cut's timestamp all go to validation: no training row shares a time with a held-out one.
    tied = [{"channel": "a", "ts": t, "target": "x"} for t in (1, 2, 3, 3, 3, 4)]
    train, val = split_rows(tied, 0.2)
    assert [tied[i]["ts"] for i in val] == [4] or {tied[i]["ts"] for i in val} >= {3, 4}
    assert max(tied[i]["ts"] for i in train) < min(tied[i]["ts"] for i in val)


# --- evaluation rows: a seeded sample spanning all lengths, token-budgeted ----------------------------------


def test_evaluation_takes_a_sample_that_spans_all_lengths_within_the_token_budget():
    rng = np.random.default_rng(1)
    lengths = np.concatenate([rng.integers(20, 60, 3000), rng.integers(400, 1000, 600)])  # many short, some long
    rng.shuffle(lengths)
    batches = plan_evaluation(lengths, batch_size=16, max_tokens=4096, max_batches=10, seed=0, world=2)
    assert 0 < len(batches) <= 20
    rows = np.concatenate(batches)
    assert len(set(rows.tolist())) == len(rows)
    for b in batches:
        assert len(b) <= 16 and lengths[b].max() * len(b) <= 4096
    picked = lengths[rows]
    # The sample follows the split's lengths: its shortest and longest tenths are the split's.
    assert picked.min() <= np.quantile(lengths, 0.05) and picked.max() >= np.quantile(lengths, 0.95)
    long_share = (picked >= 400).mean()
    assert abs(long_share - 600 / 3600) < 0.05, long_share
    again = plan_evaluation(lengths, batch_size=16, max_tokens=4096, max_batches=10, seed=0, world=2)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))  # the same rows at every evaluation
    # Today's rule for comparison: the first batches of rows sorted by length are the shortest rows only.
    shortest_first = np.sort(lengths)[: 10 * 16]
    assert shortest_first.max() < 60


def test_a_small_split_is_evaluated_whole():
    lengths = np.random.default_rng(2).integers(10, 200, 50)
    batches = plan_evaluation(lengths, batch_size=8, max_tokens=None, max_batches=10, seed=0, world=1)
    assert sorted(np.concatenate(batches).tolist()) == list(range(50))
    assert sorted(np.concatenate(plan_evaluation(lengths, 8, None, None, 0, 1)).tolist()) == list(range(50))


def test_evaluation_in_a_run_covers_the_sampled_rows(prepared, tmp_path):
    cfg = tiny_config(prepared, tmp_path / "runs", "run.name=eval", "model.method=full", "training.max_steps=2",
                      "training.eval_steps=2", "training.save_steps=2", "training.eval_max_batches=3",
                      "training.max_tokens_per_batch=512")
    result = train(cfg, use_ray=False)
    (evaluation,) = [m for m in read_metrics(result.run_dir) if m["kind"] == "eval"]
    val_rows = len((prepared / "val.jsonl").read_text().splitlines())
    assert 8 < evaluation["rows"] <= 24 < val_rows  # three token-budgeted batches of up to 8 rows, of ~240


# --- resuming only when it should ------------------------------------------------------------------


def killed_run(prepared: Path, runs: Path, *overrides: str) -> Path:
    """A run that stopped after its checkpoint at step 2 of 6, as a kill leaves it."""
    cfg = tiny_config(prepared, runs, "run.name=resume", "model.method=full", "training.max_steps=6",
                      "training.save_steps=2", "training.eval_steps=2", "training.keep_checkpoints=10",
                      "training.lr_schedule=constant", *overrides)
    result = train(cfg, use_ray=False)
    run_dir = result.run_dir
    for step in (4, 6):
        shutil.rmtree(run_dir / f"checkpoint-{step}")
    (run_dir / ckpt.COMPLETED).unlink()
    lines = [m for m in read_metrics(run_dir) if m["step"] <= 2]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    assert steps_of(run_dir) == [2]
    return run_dir


def train_cli(prepared: Path, runs: Path, *args: str) -> int:
    return cli_main(["train", "--no-ray", f"data.path={prepared}", f"run.dir={runs}", "run.name=resume", *TINY,
                     "model.method=full", "training.max_steps=6", "training.save_steps=2", "training.eval_steps=2",
                     "training.keep_checkpoints=10", "training.lr_schedule=constant", *args])


def test_the_same_settings_resume_the_killed_run(prepared, tmp_path, capfd):
    run_dir = killed_run(prepared, tmp_path / "runs")
    capfd.readouterr()
    assert train_cli(prepared, tmp_path / "runs") == 0
    assert f"resuming run {run_dir}" in capfd.readouterr().err
    starts = [m for m in read_metrics(run_dir) if m["kind"] == "start"]
    assert [m["resumed_from_step"] for m in starts] == [0, 2]


def test_a_changed_learning_rate_starts_a_new_run_and_says_why(prepared, tmp_path, capfd):
    run_dir = killed_run(prepared, tmp_path / "runs")
    capfd.readouterr()
    assert train_cli(prepared, tmp_path / "runs", "training.learning_rate=0.005") == 0
    err = capfd.readouterr().err
    (line,) = [l for l in err.splitlines() if "not resuming" in l]
    assert str(run_dir) in line and "training.learning_rate 0.01 -> 0.005" in line and "run.resume=force" in line
    assert len([p for p in (tmp_path / "runs" / "resume").iterdir() if p.is_dir()]) == 2
    assert not (run_dir / ckpt.COMPLETED).exists()  # the old run is left as it was


def test_changed_data_starts_a_new_run_and_says_why(prepared, tmp_path, capfd):
    killed_run(prepared, tmp_path / "runs")
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    lines = (data / "train.jsonl").read_text().splitlines()
    (data / "train.jsonl").write_text("\n".join(lines[:-50]) + "\n")
    capfd.readouterr()
    assert cli_main(["train", "--no-ray", f"data.path={data}", f"run.dir={tmp_path / 'runs'}", "run.name=resume", *TINY,
                     "model.method=full", "training.max_steps=6", "training.save_steps=2", "training.eval_steps=2",
                     "training.keep_checkpoints=10", "training.lr_schedule=constant"]) == 0
    assert re.search(r"not resuming .*: the training data changed; starting a new run", capfd.readouterr().err)


def test_resume_force_takes_the_new_learning_rate_and_never_starts_anew(prepared, tmp_path, capfd):
    run_dir = killed_run(prepared, tmp_path / "runs")
    capfd.readouterr()
    assert train_cli(prepared, tmp_path / "runs", "--resume=force", "training.learning_rate=0.005") == 0
    assert "run.resume=force: resuming" in capfd.readouterr().err
    assert len([p for p in (tmp_path / "runs" / "resume").iterdir() if p.is_dir()]) == 1
    after = [m for m in read_metrics(run_dir) if m["kind"] == "train" and m["step"] > 2]
    assert [m["step"] for m in after] == [3, 4, 5, 6]
    assert all(m["lr"] == pytest.approx(0.005) for m in after), "the saved learning rate must not win"
    assert train_cli(prepared, tmp_path / "runs", "--resume=never", "training.max_steps=2") == 0
    assert len([p for p in (tmp_path / "runs" / "resume").iterdir() if p.is_dir()]) == 2


def test_resume_refuses_a_run_whose_speaker_map_gives_the_tokens_to_other_people(prepared, tmp_path):
    killed_run(prepared, tmp_path / "runs")
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    smap = json.loads((data / "speaker_map.json").read_text())
    first, second = smap["speakers"][0], smap["speakers"][1]
    # The same names, other people: the map is keyed on author ids (a rename alone changes nothing).
    first["author_id"], second["author_id"] = second["author_id"], first["author_id"]
    (data / "speaker_map.json").write_text(json.dumps(smap))
    base = [f"data.path={data}", f"run.dir={tmp_path / 'runs'}", "run.name=resume", *TINY, "model.method=full",
            "training.max_steps=6", "training.save_steps=2", "training.eval_steps=2", "training.keep_checkpoints=10",
            "training.lr_schedule=constant"]
    with pytest.raises(ConfigError, match=r"another speaker map than data.path's \(2 speaker token\(s\) differ: <S0> is author .* "
                                          r"for run .* but author .* in data.path; <S1> is .*\): .*"
                                          r"Train on the data it was trained on, or start a new run \(run.resume=never\)"):
        train(load_config(None, base + ["run.resume=force"]), use_ray=False)
    # auto: a new run, saying that the speaker map changed
    result = train(load_config(None, base), use_ray=False)
    assert result.run_dir.name != "" and len([p for p in (tmp_path / "runs" / "resume").iterdir() if p.is_dir()]) == 2


def test_continuing_from_a_checkpoint_with_another_speaker_map_is_refused(prepared, tmp_path):
    cfg = tiny_config(prepared, tmp_path / "runs", "run.name=first", "model.method=full", "training.max_steps=2",
                      "training.eval_steps=2", "training.save_steps=2")
    checkpoint = train(cfg, use_ray=False).latest_checkpoint
    smap = json.loads((checkpoint / "speaker_map.json").read_text())
    smap["speakers"][2]["author_id"] = "somebody_else"
    (checkpoint / "speaker_map.json").write_text(json.dumps(smap))
    cfg = tiny_config(prepared, tmp_path / "runs", "run.name=second", f"model.base={checkpoint}", "model.method=full")
    with pytest.raises(ConfigError, match=r"model.base=.* another speaker map .*<S2> is author 'somebody_else' .* but author '.*' .* in data.path"):
        train(cfg, use_ray=False)


def test_operational_settings_do_not_block_a_resume():
    a = load_config(None, ["training.eval_steps=10", "training.max_failures=1", "model.gradient_checkpointing=false"])
    b = load_config(None, ["training.eval_steps=99", "training.max_failures=5", "model.gradient_checkpointing=true",
                           "data.path=elsewhere", "run.dir=other"])
    assert training_signature(a) == training_signature(b)
    c = load_config(None, ["training.batch_size=4"])
    assert training_signature(a) != training_signature(c)
    assert load_config(None, ["run.resume=false"]).run.resume == "never"  # older configs said true/false


# --- checkpoints written by several workers ------------------------------------------------------------


def test_the_manifest_lists_every_workers_files_and_refuses_clashes():
    rank0 = {"adapter_model.safetensors": 100, "rng-rank0.pt": 10, "deepspeed/state/mp_rank_00_model_states.pt": 50,
             "deepspeed/state/zero_pp_rank_0_mp_rank_00_optim_states.pt": 70}
    rank1 = {"rng-rank1.pt": 10, "deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt": 70}
    merged = ckpt.merge_rank_files([rank0, rank1])
    assert set(merged) == set(rank0) | set(rank1)
    with pytest.raises(ValueError, match="rng-rank0.pt is written by two workers"):
        ckpt.merge_rank_files([rank0, {"rng-rank0.pt": 11}])


def test_a_checkpoint_missing_a_workers_files_is_incomplete_and_never_loaded(prepared, tmp_path):
    cfg = tiny_config(prepared, tmp_path / "runs", "run.name=ranks", "model.method=full", "training.max_steps=2",
                      "training.eval_steps=2", "training.save_steps=2")
    folder = train(cfg, use_ray=False).latest_checkpoint
    manifest = ckpt.read_manifest(folder)
    # What two workers would have written: rank 1's RNG file listed, then lost on the way to storage.
    (folder / "rng-rank1.pt").write_bytes((folder / "rng-rank0.pt").read_bytes())
    ckpt.write_manifest(folder, {k: v for k, v in manifest.items() if k != "files"},
                        ckpt.merge_rank_files([manifest["files"], {"rng-rank1.pt": (folder / "rng-rank1.pt").stat().st_size}]))
    assert ckpt.is_complete(folder)
    (folder / "rng-rank1.pt").unlink()
    assert not ckpt.is_complete(folder)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        ckpt.find_latest(tmp_path / "runs", "ranks")
    model, _ = loop.build_model(cfg, _job(folder), torch.device("cpu"), tmp_path / "work")
    optimizer, scheduler = loop.setup_optimizer(cfg, model, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="incomplete"):
        loop.load_checkpoint(folder, model, optimizer, scheduler, loop.Session())


def test_a_missing_rng_file_of_a_worker_that_saved_is_an_error_not_a_silent_skip(prepared, tmp_path):
    cfg = tiny_config(prepared, tmp_path / "runs", "run.name=rng", "model.method=full", "training.max_steps=2",
                      "training.eval_steps=2", "training.save_steps=2")
    folder = train(cfg, use_ray=False).latest_checkpoint
    state = torch.load(folder / ckpt.TRAINING_STATE, weights_only=False)
    state["world"] = 2  # saved by two workers; rank 1's file never listed (an older manifest)
    torch.save(state, folder / ckpt.TRAINING_STATE)
    manifest = ckpt.read_manifest(folder)
    ckpt.write_manifest(folder, {k: v for k, v in manifest.items() if k != "files"})

    class Rank1(loop.Session):
        rank, world = 1, 2

    class Rank2(loop.Session):
        rank, world = 2, 3

    model, _ = loop.build_model(cfg, _job(folder), torch.device("cpu"), tmp_path / "work")
    optimizer, scheduler = loop.setup_optimizer(cfg, model, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="has no rng-rank1.pt although 2 workers saved it"):
        loop.load_checkpoint(folder, model, optimizer, scheduler, Rank1())
    # A worker the checkpoint never had (resumed on more workers) gets a fresh stream, and says so.
    assert loop.load_checkpoint(folder, model, optimizer, scheduler, Rank2()).step == 2


def _job(folder: Path) -> loop.JobSpec:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    smap = json.loads((folder / "speaker_map.json").read_text())
    return loop.JobSpec(run_dir=str(folder.parent), metrics_dir=None, base="tiny", tokenizer=tokenizer, speaker_map=smap,
                        chat_token_ids=[], speaker_token_ids=[], config_yaml="")


def test_zero_stage_3_is_refused_at_config_time():
    with pytest.raises(ConfigError, match=r"training.zero_stage=3 is not supported: .*partitions.*use training.zero_stage=2"):
        load_config(None, ["training.use_gpu=true", "training.deepspeed=true", "training.zero_stage=3", "model.method=lora"])
