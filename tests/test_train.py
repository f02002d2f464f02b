"""Training end to end on the demo corpus and a tiny model: target-only labels, the loss falling,
LoRA touching only the adapter and the chat-token rows, batch x accumulation equivalence, QLoRA on
CPU, a foreign Hugging Face model folder, checkpoints that reload elsewhere, resuming after a kill
(of one Ray worker, or of the whole command), and bad input refused before any training starts."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from fizzbot.config import ConfigError, DataConfig, FizzbotConfig, load_config
from fizzbot.data.demo import PERSONAS, write_demo_corpus
from fizzbot.errors import InputError
from fizzbot.data.pipeline import prepare
from fizzbot.chat.speakers import SpeakerMap
from fizzbot.model.tokenizer import TokenizerError, check_chat_tokens, train_tiny_tokenizer
from fizzbot.artifacts import checkpoint as ckpt
from fizzbot.train import loop
from fizzbot.train.data import IGNORE_INDEX, RowTokenizer, collate, collate_packed, read_rows
from fizzbot.train.trainer import TrainResult, _tokenizer_texts, build_tokenizer, resolve_data, train

REPO = Path(__file__).resolve().parents[1]
RUN_STAMP = re.compile(r"^\d{8}-\d{6}(-\d+)?$")

# A model small enough that a training step takes milliseconds on one CPU core.
TINY = [
    "model.tiny.vocab_size=512",
    "model.tiny.hidden_size=64",
    "model.tiny.num_layers=2",
    "model.tiny.num_heads=4",
    "model.tiny.num_kv_heads=4",
    "model.tiny.intermediate_size=128",
    "model.tiny.max_position_embeddings=128",
    "training.max_seq_len=128",
    "training.num_workers=1",
    "training.threads_per_worker=1",  # tiny matrices: one thread is fastest, and the cores are shared
    "training.batch_size=8",
    "training.learning_rate=1e-2",
    "training.lr_schedule=constant",
    "training.warmup_steps=0",
    "training.eval_max_batches=2",
    "training.log_steps=1",
]


# --- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Three days of the demo chat, prepared without Ray (~2,100 train and ~240 val rows)."""
    root = tmp_path_factory.mktemp("train-data")
    write_demo_corpus(root / "corpus", seed=0, days=3)
    out = root / "prepared"
    prepare(
        DataConfig(inputs=[str(root / "corpus")], output=str(out), path=str(out), val_split=0.1,
                   max_context_messages=6, max_context_chars=600, max_speakers=16),
        use_ray=False, report=False,
    )
    return out


def tiny_config(data: Path, runs: Path, *overrides: str) -> FizzbotConfig:
    return load_config(None, [f"data.path={data}", f"run.dir={runs}", *TINY, *overrides])


@pytest.fixture(scope="module")
def tokenizer(prepared, tmp_path_factory):
    """The run's tokenizer as training builds it: the tiny BPE on the corpus, plus the chat tokens."""
    run_dir = tmp_path_factory.mktemp("tokenizer-run")
    cfg = tiny_config(prepared, run_dir)
    return build_tokenizer(cfg, resolve_data(cfg, run_dir), run_dir)


def speaker_ids(tokenizer, prepared: Path) -> list[int]:
    return tokenizer.convert_tokens_to_ids(SpeakerMap.load(prepared / "speaker_map.json").tokens)


def messages_of(context: str) -> list[str]:
    """A context string split into its messages (each starts with a speaker token)."""
    return [m for m in re.split(r"(?=<S\d+>)", context) if m]


@torch.no_grad()
def token_tables(model, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The effective input embedding and output head, row per token, as the model computes them
    (through peft's trainable-token wrappers, whose rows live outside the base weight)."""
    embed = model.get_input_embeddings()(torch.arange(vocab))
    head = model.get_output_embeddings()
    hidden = embed.shape[1]
    out = head(torch.eye(hidden)).T[:vocab]
    return embed.clone(), out.clone()


def changed_rows(before: torch.Tensor, after: torch.Tensor) -> set[int]:
    return set(torch.nonzero((before != after).any(dim=1)).flatten().tolist())


@dataclass
class Trained:
    """A finished local run, with the model object it trained and how that model looked before."""

    result: TrainResult
    model: torch.nn.Module
    job: loop.JobSpec
    before: dict[str, torch.Tensor]  # every parameter as built
    tables_before: tuple[torch.Tensor, torch.Tensor]

    def metrics(self, kind: str) -> list[dict]:
        return [m for m in read_metrics(self.result.run_dir) if m["kind"] == kind]


def train_and_capture(cfg: FizzbotConfig) -> Trained:
    """train(cfg, use_ray=False), keeping the model that the real loop built and trained."""
    seen: dict = {}
    real_build = loop.build_model

    def spy(cfg_, job, device, workdir):
        model, base = real_build(cfg_, job, device, workdir)
        seen.update(
            model=model, job=job,
            before={n: p.detach().clone() for n, p in model.named_parameters()},
            tables_before=token_tables(model, len(job.tokenizer)),
        )
        return model, base

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "build_model", spy)
        result = train(cfg, use_ray=False)
    seen["model"].eval()
    return Trained(result, **seen)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def steps_of(run_dir: Path) -> list[int]:
    return [step for step, _, _ in ckpt.checkpoints_of(run_dir)]


@pytest.fixture(scope="module")
def full_run(prepared, tmp_path_factory) -> Trained:
    """Full fine-tuning, 16 steps at a high learning rate, evaluated every step, saved every 4."""
    runs = tmp_path_factory.mktemp("full-runs")
    cfg = tiny_config(prepared, runs, "run.name=full", "model.method=full", "training.max_steps=16",
                      "training.eval_steps=1", "training.save_steps=4", "training.keep_checkpoints=2")
    return train_and_capture(cfg)


@pytest.fixture(scope="module")
def lora_runs(prepared, tmp_path_factory) -> dict[str, Trained]:
    """LoRA for 4 steps, on the tiny model with tied embeddings and with a separate output head."""
    runs = tmp_path_factory.mktemp("lora-runs")
    out = {}
    for name, tie in (("tied", "true"), ("untied", "false")):
        cfg = tiny_config(prepared, runs, f"run.name=lora-{name}", "model.method=lora", "training.max_steps=4",
                          "training.eval_steps=4", "training.save_steps=4", f"model.tiny.tie_word_embeddings={tie}")
        out[name] = train_and_capture(cfg)
    return out


# --- labels ---------------------------------------------------------------------------------------


def test_labels_mask_exactly_the_context_and_padding(prepared, tokenizer):
    contexts, targets = read_rows(prepared / "val.jsonl")
    contexts, targets = contexts[:48], targets[:48]
    rows = RowTokenizer(tokenizer, 512, speaker_ids(tokenizer, prepared))(contexts, targets)
    assert rows.truncated == 0
    batch = collate(rows, np.arange(len(rows)), tokenizer.pad_token_id)
    longest = batch.input_ids.shape[1]
    assert longest == max(rows.lengths())
    for r in range(len(rows)):
        ids, n_ctx, n = rows.row(r), int(rows.n_context[r]), len(rows.row(r))
        labels = batch.labels[r].tolist()
        assert ids[0] == tokenizer.bos_token_id
        # BOS and context: masked; the target: its own ids; padding: masked and attention-free.
        assert labels[:n_ctx] == [IGNORE_INDEX] * n_ctx
        assert labels[n_ctx:n] == ids[n_ctx:].tolist()
        assert labels[n:] == [IGNORE_INDEX] * (longest - n)
        assert batch.attention_mask[r].tolist() == [1] * n + [0] * (longest - n)
        assert batch.input_ids[r, n:].eq(tokenizer.pad_token_id).all()
        assert tokenizer.decode(ids[1:n_ctx]) == contexts[r]
        assert tokenizer.decode(ids[n_ctx:]) == targets[r]
        assert tokenizer.convert_ids_to_tokens(int(ids[n_ctx])) == targets[r].split(" ", 1)[0]
        assert tokenizer.convert_ids_to_tokens(int(ids[-1])) == "<EOT>"
    assert batch.target_tokens == int(sum((batch.labels != IGNORE_INDEX).sum(dim=1)))


def test_train_on_context_labels_every_message_of_a_row_padded_or_packed(prepared, tokenizer):
    contexts, targets = read_rows(prepared / "val.jsonl")
    rows = RowTokenizer(tokenizer, 512, speaker_ids(tokenizer, prepared))(contexts[:48], targets[:48])
    speakers = set(speaker_ids(tokenizer, prepared))
    padded = collate(rows, np.arange(len(rows)), tokenizer.pad_token_id, train_on_context=True)
    for r in range(len(rows)):
        ids, n = rows.row(r).tolist(), len(rows.row(r))
        labels = padded.labels[r].tolist()
        # Only BOS (nothing before it predicts it) and padding are masked: each context message is a
        # target too, its speaker token included.
        assert labels[0] == IGNORE_INDEX and labels[1:n] == ids[1:]
        assert labels[n:] == [IGNORE_INDEX] * (len(labels) - n)
        messages = contexts[r].count("<EOT>") + 1
        assert sum(t in speakers for t in labels) == messages
    assert padded.target_tokens == int((padded.labels != IGNORE_INDEX).sum()) == int(sum(rows.lengths() - 1))
    # Packed: the same labels, row by row, each row's first id masked.
    order = np.arange(len(rows))
    packed = collate_packed(rows, order, tokenizer.pad_token_id, int(rows.lengths().sum()) + 8, train_on_context=True)
    assert packed.target_tokens == padded.target_tokens
    assert packed.labels[packed.labels != IGNORE_INDEX].tolist() == padded.labels[padded.labels != IGNORE_INDEX].tolist()
    # Off (the default), the same rows label their targets only.
    assert collate(rows, order, tokenizer.pad_token_id).target_tokens == int(sum(rows.lengths() - np.maximum(rows.n_context, 1)))


def test_overlong_rows_lose_whole_oldest_context_messages_or_keep_the_newest_ones_end(prepared, tokenizer):
    limit = 40
    contexts, targets = read_rows(prepared / "train.jsonl")
    contexts, targets = contexts[:300], targets[:300]
    speakers = speaker_ids(tokenizer, prepared)
    rows = RowTokenizer(tokenizer, limit, speakers)(contexts, targets)
    assert rows.truncated > 10
    cut_some = 0
    for r in range(len(rows)):
        ids, n_ctx = rows.row(r), int(rows.n_context[r])
        assert len(ids) <= limit
        target_ids = tokenizer(targets[r], add_special_tokens=False)["input_ids"]
        if len(target_ids) + 1 > limit:
            # A target alone longer than the budget: BOS, then as much of the target as fits.
            assert n_ctx == 1 and ids[1:].tolist() == target_ids[: limit - 1]
            continue
        assert tokenizer.decode(ids[n_ctx:]) == targets[r]  # the target is never cut
        messages = messages_of(contexts[r])
        kept_ids = ids[1:n_ctx].tolist()
        kept = tokenizer.decode(kept_ids)
        dropped = len(messages) - len(messages_of(kept))
        if messages and kept != "".join(messages[dropped:]):
            # The newest message alone is over the budget: its speaker token, then its last ids,
            # filling the budget (the rule the server's prompts follow too).
            newest = tokenizer(messages[-1], add_special_tokens=False)["input_ids"]
            budget = limit - 1 - len(target_ids)
            assert len(newest) > budget
            assert kept_ids[0] == newest[0] and len(kept_ids) == budget
            full = tokenizer(contexts[r], add_special_tokens=False)["input_ids"]
            assert kept_ids[1:] == full[len(full) - (len(kept_ids) - 1) :]
            continue
        if dropped:
            cut_some += 1
            # The newest message that was dropped would not have fitted.
            wider = tokenizer("".join(messages[dropped - 1 :]), add_special_tokens=False)["input_ids"]
            assert 1 + len(wider) + len(target_ids) > limit
    assert cut_some > 10


# --- the loss falls; what LoRA trains ------------------------------------------------------------------


def test_loss_falls_on_the_demo_corpus(full_run):
    train_losses = [m["loss"] for m in full_run.metrics("train")]
    val_losses = [m["val_loss"] for m in full_run.metrics("eval")]
    assert len(train_losses) == 16 and len(val_losses) == 16
    assert all(math.isfinite(x) for x in train_losses + val_losses)
    assert train_losses[-1] < train_losses[0] - 0.5, train_losses
    assert val_losses[-1] < val_losses[0] - 0.5, val_losses
    assert full_run.result.final_step == 16
    # Every parameter of a full fine-tune trains.
    changed = [n for n, p in full_run.model.named_parameters() if not torch.equal(p.detach(), full_run.before[n])]
    assert len(changed) == len(full_run.before)


def test_local_run_keeps_the_best_checkpoints_and_the_latest(full_run):
    run_dir = full_run.result.run_dir
    assert RUN_STAMP.match(run_dir.name) and run_dir.parent.name == "full"
    val = {m["step"]: m["val_loss"] for m in full_run.metrics("eval")}
    saved = [4, 8, 12, 16]
    best_two = sorted(saved, key=lambda s: val[s])[:2]
    assert set(steps_of(run_dir)) == set(best_two) | {16}
    assert ckpt.best_checkpoint(run_dir) == run_dir / f"checkpoint-{min(saved, key=lambda s: val[s])}"
    assert (run_dir / ckpt.COMPLETED).is_file() and (run_dir / "loss_curves.png").is_file()


@pytest.mark.parametrize("tie", ["tied", "untied"])
def test_lora_trains_only_the_adapter_and_the_chat_token_rows(lora_runs, tie):
    run = lora_runs[tie]
    model = run.model
    chat = set(run.job.chat_token_ids)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_A" in n or "lora_B" in n or "trainable_tokens_delta" in n) for n in trainable)
    for name, p in model.named_parameters():
        same = torch.equal(p.detach(), run.before[name])
        if name in trainable:
            assert not same, f"{name} did not train"
        else:
            assert same, f"frozen {name} changed"
    assert sum("lora_A" in n for n in trainable) == sum("lora_B" in n for n in trainable) == 2 * 7

    embed_before, out_before = run.tables_before
    embed_after, out_after = token_tables(model, len(run.job.tokenizer))
    in_rows, out_rows = changed_rows(embed_before, embed_after), changed_rows(out_before, out_after)
    assert in_rows and in_rows <= chat, sorted(in_rows - chat)
    assert out_rows and out_rows <= chat, sorted(out_rows - chat)
    head_deltas = [n for n in trainable if "lm_head" in n and "trainable_tokens_delta" in n]
    if tie == "tied":
        assert torch.equal(embed_after, out_after), "tied embeddings must stay tied"
        assert not head_deltas
    else:
        assert head_deltas, "the separate output head's chat rows must train"
        assert not torch.equal(embed_after, out_after)
        # Every speaker token is a candidate at every target position: all their output rows move.
        speakers = set(run.job.speaker_token_ids)
        assert speakers <= out_rows

    # The checkpoint holds the adapter and the trained rows, and no base weight.
    from safetensors.torch import load_file

    saved = load_file(str(run.result.latest_checkpoint / "adapter_model.safetensors"))
    assert all("lora_" in k or "trainable_tokens" in k for k in saved), sorted(saved)
    assert sum("trainable_tokens" in k for k in saved) == (1 if tie == "tied" else 2)


# --- batch x accumulation, QLoRA ------------------------------------------------------------------------


def test_batch_8_by_1_matches_batch_4_by_2(prepared, tmp_path):
    runs = {}
    for batch, accum in ((8, 1), (4, 2)):
        cfg = tiny_config(prepared, tmp_path / "runs", f"run.name=b{batch}x{accum}", "model.method=full",
                          "training.batching=pad", f"training.batch_size={batch}", f"training.grad_accum_steps={accum}",
                          "training.learning_rate=1e-3", "training.max_steps=3", "training.eval_steps=3", "training.save_steps=3",
                          "training.eval_max_batches=null")  # a cap in batches would evaluate different rows
        runs[batch] = train_and_capture(cfg)
    a, b = runs[8], runs[4]
    loss_a = [m["loss"] for m in a.metrics("train")]
    loss_b = [m["loss"] for m in b.metrics("train")]
    assert len(loss_a) == 3 and loss_a == pytest.approx(loss_b, rel=1e-5)
    assert a.metrics("eval")[-1]["val_loss"] == pytest.approx(b.metrics("eval")[-1]["val_loss"], rel=1e-5)
    params_b = dict(b.model.named_parameters())
    for name, p in a.model.named_parameters():
        # Adam moves every weight by about lr per step, whatever its gradient's size: the two
        # trajectories agree to well under one step (1e-3).
        assert torch.allclose(p, params_b[name], atol=1e-4), (name, float((p - params_b[name]).abs().max()))
    assert not any(torch.equal(p, a.before[n]) for n, p in a.model.named_parameters())  # both really trained


def test_qlora_trains_on_cpu(prepared, tmp_path):
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.nn import Linear4bit

    cfg = tiny_config(prepared, tmp_path / "runs", "run.name=qlora", "model.method=qlora", "training.max_steps=2",
                      "training.eval_steps=2", "training.save_steps=2")
    run = train_and_capture(cfg)
    assert run.result.final_step == 2
    quantized = [m for m in run.model.modules() if isinstance(m, Linear4bit)]
    assert len(quantized) == 2 * 7  # every linear layer of the decoder, 4-bit
    assert all(math.isfinite(m["loss"]) for m in run.metrics("train"))
    for name, p in run.model.named_parameters():
        same = torch.equal(p.detach(), run.before[name])
        assert same != p.requires_grad, name  # trainable ones moved, 4-bit base weights did not
    assert (run.result.latest_checkpoint / "adapter_model.safetensors").is_file()


# --- checkpoints reload elsewhere ----------------------------------------------------------------------

RELOAD_SCRIPT = r"""
import json, sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM
from peft import PeftModel
diffs = {}
for job in json.loads(sys.argv[1]):
    ckpt = Path(job["checkpoint"])
    if job["kind"] == "full":
        model = AutoModelForCausalLM.from_pretrained(ckpt)
    else:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ckpt / "base"), ckpt)
    model.eval()
    saved = torch.load(job["expected"])
    with torch.no_grad():
        logits = model(input_ids=saved["input_ids"]).logits
    diffs[job["name"]] = float((logits - saved["logits"]).abs().max())
print(json.dumps(diffs))
"""


def fixed_input(tokenizer) -> torch.Tensor:
    text = "<S0> hello all <EOT>\n<S1> Good evening. <EOT>\n<S2> what's up? <EOT>\n"
    return torch.tensor([[tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]])


def test_checkpoints_reload_in_a_fresh_process_with_the_same_logits(full_run, lora_runs, tmp_path):
    jobs = []
    for name, run, kind in (("full", full_run, "full"), ("lora-tied", lora_runs["tied"], "lora"),
                            ("lora-untied", lora_runs["untied"], "lora")):
        latest = run.result.latest_checkpoint
        assert latest.name == f"checkpoint-{run.result.final_step}"  # what the in-memory model is
        ids = fixed_input(run.job.tokenizer)
        with torch.no_grad():
            logits = run.model(input_ids=ids).logits
        expected = tmp_path / f"{name}.pt"
        torch.save({"input_ids": ids, "logits": logits}, expected)
        jobs.append({"name": name, "kind": kind, "checkpoint": str(latest), "expected": str(expected)})
    proc = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, json.dumps(jobs)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    diffs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(diffs) == {"full", "lora-tied", "lora-untied"}
    assert all(d < 1e-4 for d in diffs.values()), diffs


def test_a_hugging_face_model_folder_gets_chat_tokens_and_trains(prepared, tmp_path):
    """A GPT-2 (another architecture: Conv1D layers, `wte` embedding, tied head) with its own tokenizer."""
    from transformers import AutoModelForCausalLM, GPT2Config

    from fizzbot.artifacts.loading import load_for_inference

    base = tmp_path / "gpt2-tiny"
    own = train_tiny_tokenizer(_tokenizer_texts(prepared / "train.jsonl"), 400)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(GPT2Config(
        vocab_size=len(own), n_embd=32, n_layer=2, n_head=2, n_positions=256,
        bos_token_id=own.bos_token_id, eos_token_id=own.eos_token_id,
    )).save_pretrained(base)
    own.save_pretrained(base)
    original = AutoModelForCausalLM.from_pretrained(base).get_input_embeddings().weight.detach()

    cfg = tiny_config(prepared, tmp_path / "runs", "run.name=gpt2", f"model.base={base}", "model.method=lora",
                      "training.max_steps=2", "training.eval_steps=2", "training.save_steps=2")
    run = train_and_capture(cfg)
    tok = run.job.tokenizer
    old_vocab = original.shape[0]
    assert len(tok) == old_vocab + len(run.job.chat_token_ids)
    assert all(i >= old_vocab for i in run.job.chat_token_ids)

    embed_before, _ = run.tables_before
    assert embed_before.shape[0] == len(tok)
    assert torch.equal(embed_before[:old_vocab], original)
    smap = SpeakerMap.load(prepared / "speaker_map.json")
    names = {s.token: s.username for s in smap.speakers}
    assert set(names.values()) <= {p.username for p in PERSONAS}
    for token, username in names.items():
        row = embed_before[tok.convert_tokens_to_ids(token)]
        ids = tok(username, add_special_tokens=False)["input_ids"]
        assert len(ids) > 0 and all(i < old_vocab for i in ids)
        assert torch.allclose(row, original[ids].mean(dim=0), atol=1e-6), token
    # <EOT> and the others token (no one's name) start at the mean of every row.
    for token in ("<EOT>", smap.other_token):
        assert torch.allclose(embed_before[tok.convert_tokens_to_ids(token)], original.mean(dim=0), atol=1e-6)
    speaker_rows = torch.stack([embed_before[tok.convert_tokens_to_ids(t)] for t in names])
    assert torch.unique(speaker_rows, dim=0).shape[0] == len(names)  # a different prior per speaker

    # It trained, only the chat rows of the (tied) embedding moved, and the checkpoint reloads.
    assert run.result.final_step == 2
    embed_after, out_after = token_tables(run.model, len(tok))
    assert changed_rows(embed_before, embed_after) <= set(run.job.chat_token_ids)
    assert torch.equal(embed_after, out_after)
    reloaded, reloaded_tok, _ = load_for_inference(run.result.latest_checkpoint, device=torch.device("cpu"))
    assert len(reloaded_tok) == len(tok)
    ids = fixed_input(tok)
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, run.model(input_ids=ids).logits, atol=1e-4)


# --- resuming -------------------------------------------------------------------------------------


def test_incomplete_checkpoint_folders_are_never_the_latest(tmp_path):
    run = tmp_path / "runs" / "demo" / "20250101-000000"
    good = run / "checkpoint-2"
    good.mkdir(parents=True)
    (good / "model.safetensors").write_bytes(b"x" * 100)
    ckpt.write_manifest(good, {"step": 2, "val_loss": 3.0})
    (run / "checkpoint-999").mkdir()  # died before its manifest
    (run / "checkpoint-999" / "model.safetensors").write_bytes(b"x" * 100)
    torn = run / "checkpoint-500"  # a manifest, but a file cut short
    shutil.copytree(good, torn)
    (torn / "model.safetensors").write_bytes(b"x" * 10)
    shutil.copytree(good, run / ".checkpoint-600.partial-local")  # still being copied into place
    assert steps_of(run) == [2]
    assert ckpt.find_latest(tmp_path / "runs", "demo") == good
    shutil.rmtree(good)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        ckpt.find_latest(tmp_path / "runs", "demo")


def test_pruning_keeps_the_best_by_validation_loss_and_the_latest(tmp_path):
    """What Ray Train's checkpoint manager never recorded (written just before an attempt died) is
    pruned by the same rule after the run: the `keep` best by val_loss, and the latest whatever its loss."""
    run = tmp_path / "run"
    for step, loss in ((4, 2.0), (8, 1.0), (12, 3.0), (16, 1.5), (20, 2.5)):
        folder = run / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"x" * 10)
        ckpt.write_manifest(folder, {"step": step, "val_loss": loss})
    (run / "checkpoint-24").mkdir()  # incomplete: neither counted nor touched
    removed = ckpt.prune(run, keep=2)
    assert sorted(p.name for p in removed) == ["checkpoint-12", "checkpoint-4"]
    assert steps_of(run) == [8, 16, 20] and (run / "checkpoint-24").is_dir()
    assert ckpt.prune(run, keep=2) == []


def test_a_time_budget_ends_the_run_early_evaluated_saved_and_complete(prepared, tmp_path):
    # 0.1 s of training: the first step is past the budget, whatever the machine's speed.
    cfg = tiny_config(prepared, tmp_path / "runs", "run.name=clock", "training.max_steps=100000", "training.max_minutes=0.0015",
                      "training.save_steps=100000", "training.eval_steps=100000", "training.log_steps=100000")
    result = train(cfg, use_ray=False)
    run_dir = result.run_dir
    assert 1 <= result.final_step < 1000
    assert json.loads((run_dir / ckpt.COMPLETED).read_text())["final_step"] == result.final_step
    assert steps_of(run_dir) == [result.final_step]
    evals = [m for m in read_metrics(run_dir) if m["kind"] == "eval"]
    assert [m["step"] for m in evals] == [result.final_step] and evals[0]["context_gain"] is not None


def test_a_run_folder_fizzbot_did_not_make_is_refused_and_left_alone(prepared, tmp_path):
    """run.dir/run.name must be new, empty or fizzbot's own: a user's folder of that name is never
    resumed from, written into, or pruned by Ray Train's checkpoint keeping."""
    mine = tmp_path / "work" / "fizzbot"
    (mine / "20240101-000000").mkdir(parents=True)  # looks like a run folder, but is the user's
    (mine / "20240101-000000" / "notes.txt").write_text("mine")
    cfg = tiny_config(prepared, tmp_path / "work", "run.name=fizzbot", "training.max_steps=1")
    with pytest.raises(InputError, match=r"work/fizzbot: run\.dir: is a folder fizzbot did not write \(1 entries, no \.fizzbot marker\)"):
        train(cfg, use_ray=False)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "work", "work/fizzbot", "work/fizzbot/20240101-000000", "work/fizzbot/20240101-000000/notes.txt"]


def test_the_same_command_resumes_a_killed_run(prepared, tmp_path):
    """`fizzbot train` killed after a checkpoint; the same command resumes in the same run folder."""
    runs = tmp_path / "runs"
    command = [
        sys.executable, "-m", "fizzbot.cli", "train", "--no-ray",
        f"data.path={prepared}", f"run.dir={runs}", "run.name=resume", *TINY, "model.method=full",
        "training.batch_size=16", "training.max_steps=40", "training.save_steps=4", "training.eval_steps=4",
        "training.eval_max_batches=1", "training.log_steps=1",
    ]
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        found: list[int] = []
        while not found and first.poll() is None and time.monotonic() < deadline:
            found = [s for r in (runs / "resume").glob("*") if r.is_dir() for s in steps_of(r)]
            time.sleep(0.02)
        assert first.poll() is None, f"the first run ended before it could be killed:\n{(tmp_path / 'first.log').read_text()[-2000:]}"
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        log.close()
    (run_dir,) = [p for p in (runs / "resume").iterdir() if p.is_dir()]
    latest = max(steps_of(run_dir))
    assert 0 < latest < 40 and not (run_dir / ckpt.COMPLETED).exists()

    # What a process killed mid-save leaves: a checkpoint without a manifest, one with a file cut
    # short, and the hidden copy of the next checkpoint that was going into place.
    (run_dir / "checkpoint-999").mkdir()
    shutil.copytree(run_dir / f"checkpoint-{latest}", run_dir / "checkpoint-998")
    with open(run_dir / "checkpoint-998" / "training_state.pt", "r+b") as fh:
        fh.truncate(100)
    shutil.copytree(run_dir / f"checkpoint-{latest}", run_dir / f".checkpoint-{latest + 4}.partial-local")
    assert max(steps_of(run_dir)) == latest

    second = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming run {runs.resolve()}/resume/{run_dir.name}" in second.stderr
    assert [p for p in (runs / "resume").iterdir() if p.is_dir()] == [run_dir]  # the same run folder, no new one
    metrics = read_metrics(run_dir)
    starts = [i for i, m in enumerate(metrics) if m["kind"] == "start"]
    assert len(starts) == 2
    assert metrics[starts[0]]["resumed_from_step"] == 0
    assert metrics[starts[1]]["resumed_from_step"] == latest
    after = [m["step"] for m in metrics[starts[1]:] if m["kind"] == "train"]
    assert after == list(range(latest + 1, 41)), "the resumed run must continue from its checkpoint, not from zero"
    assert json.loads((run_dir / ckpt.COMPLETED).read_text())["final_step"] == 40
    assert max(steps_of(run_dir)) == 40
    assert ckpt.find_latest(runs, "resume").name != "checkpoint-999"
    assert not (run_dir / f".checkpoint-{latest + 4}.partial-local").exists()


# --- bad input is refused before training starts -------------------------------------------------------


def nothing_trained(runs: Path) -> bool:
    return not list(runs.rglob("metrics.jsonl")) and not list(runs.rglob("checkpoint-*"))


def test_missing_data_folder_is_refused(tmp_path):
    cfg = tiny_config(tmp_path / "nowhere", tmp_path / "runs")
    with pytest.raises(InputError, match=r"nowhere: data.path does not exist \(prepare data first: fizzbot prepare"):
        train(cfg, use_ray=False)
    assert nothing_trained(tmp_path / "runs")


def test_empty_data_folder_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(InputError, match=r"data: no train.jsonl in the data folder"):
        train(tiny_config(tmp_path / "data", tmp_path / "runs"), use_ray=False)
    assert nothing_trained(tmp_path / "runs")


def test_empty_train_file_is_refused(prepared, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(prepared / "speaker_map.json", data)
    shutil.copy(prepared / "val.jsonl", data)
    (data / "train.jsonl").write_text("")
    with pytest.raises(InputError, match=r"train.jsonl: training data is empty"):
        train(tiny_config(data, tmp_path / "runs"), use_ray=False)
    assert nothing_trained(tmp_path / "runs")


@pytest.mark.parametrize("bad_line", ['{"context": "<S1> hi <EOT>\\n"}', '{"context": "", "target": "  "}', '["not", "a row"]'])
def test_a_row_without_a_target_is_named_by_file_and_line(prepared, tmp_path, bad_line):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(prepared / "speaker_map.json", data)
    shutil.copy(prepared / "val.jsonl", data)
    lines = (prepared / "train.jsonl").read_text().splitlines()[:20]
    lines.insert(6, bad_line)
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=re.escape(f"{data / 'train.jsonl'}:7: ")) as info:
        train(tiny_config(data, tmp_path / "runs"), use_ray=False)
    assert "target" in str(info.value) or "JSON object" in str(info.value)
    assert nothing_trained(tmp_path / "runs")


def test_a_tokenizer_that_splits_a_speaker_token_is_refused(prepared):
    plain = train_tiny_tokenizer(_tokenizer_texts(prepared / "train.jsonl"), 400)  # no chat tokens added
    with pytest.raises(TokenizerError, match=r"splits <S12> into \d+ ids .*must be one special token"):
        check_chat_tokens(plain, ["<S12>"])
    plain.add_special_tokens({"additional_special_tokens": ["<S12>"]})
    with pytest.raises(TokenizerError, match="splits <EOT>"):
        check_chat_tokens(plain, ["<S12>"])


def test_deepspeed_on_cpu_is_a_config_error():
    with pytest.raises(ConfigError, match=r"training.deepspeed needs training.use_gpu=true.*training.deepspeed=false"):
        load_config(None, ["training.deepspeed=true", "training.use_gpu=false"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_use_gpu_without_a_gpu_is_refused_before_any_work(prepared, tmp_path):
    cfg = tiny_config(prepared, tmp_path / "runs", "training.use_gpu=true")
    with pytest.raises(ConfigError, match=r"training.use_gpu=true but this machine has no CUDA GPU: use training.use_gpu=false"):
        train(cfg, use_ray=False)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_use_gpu_on_a_ray_cluster_without_gpus_is_refused(ray_local, prepared, tmp_path):
    if ray_local.cluster_resources().get("GPU", 0):
        pytest.skip("this Ray cluster has GPUs")
    cfg = tiny_config(prepared, tmp_path / "runs", "training.use_gpu=true", "training.num_workers=2")
    with pytest.raises(ConfigError, match=r"training.use_gpu=true with 2 workers, but this Ray cluster has 0 GPUs.*training.use_gpu=false"):
        train(cfg, use_ray=True)
    assert not (tmp_path / "runs").exists()


# --- Ray Train: two CPU workers, one of them killed ------------------------------------------------


def registered_checkpoint(run_root: Path) -> int | None:
    """The step of the newest checkpoint Ray Train has registered (its snapshot names it)."""
    for snapshot in run_root.glob("*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
        except (OSError, json.JSONDecodeError):  # being rewritten
            continue
        if latest:
            return int(latest["checkpoint_dir_name"].split("-")[1])
    return None


def ray_train_workers() -> list:
    """This test process's Ray Train worker processes (Ray titles them `ray::RayTrainWorker...`)."""
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            title = (proc.cmdline() or [""])[0]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if title.startswith("ray::RayTrainWorker"):
            found.append(proc)
    return found


@dataclass
class KilledRun:
    result: TrainResult
    max_steps: int
    registered_at_kill: int
    on_disk_at_kill: list[int]
    killed_pid: int


@pytest.fixture(scope="module")
def ray_killed_run(ray_local, prepared, tmp_path_factory) -> KilledRun:
    """`train(use_ray=True)` with two CPU workers; one is SIGKILLed once a checkpoint is registered."""
    runs = tmp_path_factory.mktemp("ray-runs")
    max_steps = 30
    cfg = tiny_config(prepared, runs, "run.name=ray", "model.method=full", "training.num_workers=2",
                      f"training.max_steps={max_steps}", "training.save_steps=3", "training.eval_steps=3",
                      "training.eval_max_batches=1", "training.log_steps=3", "training.keep_checkpoints=2",
                      "training.max_failures=1", "training.learning_rate=3e-3")
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = train(cfg, use_ray=True)
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 180
    registered = None
    while registered is None and thread.is_alive() and time.monotonic() < deadline:
        registered = registered_checkpoint(runs / "ray")
        time.sleep(0.05)
    workers = ray_train_workers()
    assert thread.is_alive(), f"the run ended before a worker could be killed: {outcome}"
    assert registered is not None and len(workers) == 2, (registered, workers)
    on_disk = [s for r in (runs / "ray").iterdir() if r.is_dir() for s in steps_of(r)]
    victim = workers[-1]
    os.kill(victim.pid, signal.SIGKILL)
    thread.join(timeout=240)
    assert not thread.is_alive(), "the run did not finish after the worker was killed"
    if "error" in outcome:
        raise outcome["error"]
    assert registered < max_steps
    return KilledRun(outcome["result"], max_steps, registered, on_disk, victim.pid)


@pytest.mark.slow
def test_two_ray_workers_write_checkpoints_and_keep_the_best(ray_killed_run):
    result = ray_killed_run.result
    run_dir = result.run_dir
    assert run_dir.parent.name == "ray" and RUN_STAMP.match(run_dir.name)
    assert result.final_step == ray_killed_run.max_steps
    metrics = read_metrics(run_dir)
    assert all(m["workers"] == 2 for m in metrics if m["kind"] == "start")
    kept = steps_of(run_dir)
    for step in kept:
        folder = run_dir / f"checkpoint-{step}"
        manifest = ckpt.read_manifest(folder)
        assert manifest["step"] == step and manifest["method"] == "full"
        assert {"model.safetensors", ckpt.TRAINING_STATE, ckpt.CONFIG_FILE, ckpt.SPEAKER_MAP, "tokenizer.json"} <= set(manifest["files"])
        assert (folder / "rng-rank0.pt").is_file() and (folder / "rng-rank1.pt").is_file()  # both workers' parts
        # The manifest, written last, covers every worker's files, not only rank 0's.
        assert {"rng-rank0.pt", "rng-rank1.pt"} <= set(manifest["files"]) and manifest["world"] == 2
    # Best 2 by validation loss (the last evaluation of each saved step), and always the latest.
    val = {m["step"]: m["val_loss"] for m in metrics if m["kind"] == "eval"}
    saved = range(3, ray_killed_run.max_steps + 1, 3)
    best_two = sorted(saved, key=lambda s: val[s])[:2]
    assert set(kept) == set(best_two) | {ray_killed_run.max_steps}
    assert not [p for p in run_dir.iterdir() if p.name.startswith("checkpoint-") and int(p.name.split("-")[1]) not in kept]
    assert (run_dir / ckpt.COMPLETED).is_file()


@pytest.mark.slow
def test_a_killed_ray_worker_resumes_from_the_last_checkpoint(ray_killed_run):
    run = ray_killed_run
    assert run.result.final_step == run.max_steps
    metrics = read_metrics(run.result.run_dir)
    starts = [i for i, m in enumerate(metrics) if m["kind"] == "start"]
    assert len(starts) == 2, "exactly one restart of the worker group"
    resumed = metrics[starts[1]]["resumed_from_step"]
    assert resumed > 0, "the restarted workers started from zero"
    assert resumed >= run.registered_at_kill and resumed in run.on_disk_at_kill
    after = [m["step"] for m in metrics[starts[1]:] if m["kind"] == "train"]
    assert after and after[0] == resumed + 3 and after[-1] == run.max_steps
    val = [m for m in metrics[starts[1]:] if m["kind"] == "eval"]
    assert math.isfinite(val[-1]["val_loss"])
