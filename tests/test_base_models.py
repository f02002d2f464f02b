"""Training on real base-model shapes, on CPU: a Qwen2-type folder with spare embedding rows and a
Llama-type folder whose tokenizer fills its vocabulary (as Llama 3's does), trained with the GPU's
vocabulary padding turned on; the chat rows' initialisation; adapters that reload for inference with
the same logits; packed batches against padded ones; the fused-kernel flag falling back on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fizzbot.artifacts import checkpoint as ckpt
from fizzbot.artifacts.loading import load_for_inference
from fizzbot.chat.speakers import SpeakerMap
from fizzbot.model.build import embedding_rows
from fizzbot.model.kernels import head_weight
from fizzbot.model.tokenizer import train_tiny_tokenizer
from fizzbot.train.data import BatchPlan, RowTokenizer, collate, collate_packed, plan_epoch, read_rows, rows_of, sequences_of
from fizzbot.train.objective import TargetOnlyLM
from fizzbot.train.trainer import _tokenizer_texts
from test_train import fixed_input, prepared, tiny_config, token_tables, train_and_capture  # noqa: F401  (fixture)

SPARE_ROWS = 37  # Qwen2.5: 151,936 rows for 151,665 tokens


def save_base(folder: Path, kind: str, prepared: Path) -> tuple[Path, int]:
    """A tiny model folder of a real family, with its own BPE tokenizer; returns (folder, its token count)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

    tokenizer = train_tiny_tokenizer(_tokenizer_texts(prepared / "train.jsonl"), 400)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if kind == "qwen2":  # tied head, spare rows past the tokenizer
        config = Qwen2Config(vocab_size=len(tokenizer) + SPARE_ROWS, tie_word_embeddings=True, **shape)
    else:  # llama: the tokenizer fills the matrix, separate output head
        config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=False, **shape)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # Reloaded as the family's tokenizer class (Qwen2's adds <|endoftext|>): that is the base's vocabulary.
    tokens = len(AutoTokenizer.from_pretrained(folder))
    if kind == "llama":
        config.vocab_size = tokens
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder, tokens


@pytest.fixture(scope="module")
def base_runs(prepared, tmp_path_factory) -> dict:
    """LoRA for 3 steps on each base, the Llama one with the vocabulary padded to 64 as on a GPU."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("bases")
    out = {}
    for kind, multiple in (("qwen2", "auto"), ("llama", 64)):
        folder, tokens = save_base(root / kind, kind, prepared)
        original = AutoModelForCausalLM.from_pretrained(folder)
        cfg = tiny_config(prepared, root / "runs", f"run.name={kind}", f"model.base={folder}", "model.method=lora",
                          f"model.vocab_multiple={multiple}", "training.max_steps=3", "training.eval_steps=3",
                          "training.save_steps=3")
        out[kind] = (train_and_capture(cfg), tokens, original)
    return out


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_every_chat_token_row_starts_at_its_mean_whatever_the_matrix_size(base_runs, prepared, kind):
    run, base_tokens, original = base_runs[kind]
    tok = run.job.tokenizer
    rows = original.get_input_embeddings().weight.shape[0]
    assert all(i >= base_tokens for i in run.job.chat_token_ids)
    if kind == "qwen2":
        assert len(tok) <= rows, "the chat tokens must take the spare rows (no resize) for this test to mean anything"
    else:
        assert len(tok) > rows
    originals = [original.get_input_embeddings().weight.detach()]
    tables = [run.tables_before[0]]
    if kind == "llama":  # the separate output head gets the same treatment from its own matrix
        originals.append(original.get_output_embeddings().weight.detach())
        tables.append(run.tables_before[1])
    smap = SpeakerMap.load(prepared / "speaker_map.json")
    names = {s.token: s.username for s in smap.speakers}  # own tokens: their username's mean
    for weight, table in zip(originals, tables):
        known = weight[:base_tokens]
        assert torch.equal(table[:base_tokens], known)  # the base's own rows untouched
        for token, username in names.items():
            ids = tok(username, add_special_tokens=False)["input_ids"]
            assert ids and all(i < base_tokens for i in ids)
            assert torch.allclose(table[tok.convert_tokens_to_ids(token)], known[ids].mean(dim=0), atol=1e-6), token
        # <EOT>, a new pad token and the shared others token: the mean of the trained rows.
        added = [t for t in ("<EOT>", tok.pad_token, smap.other_token) if t and tok.convert_tokens_to_ids(t) >= base_tokens]
        assert "<EOT>" in added and smap.other_token in added
        for token in added:
            assert torch.allclose(table[tok.convert_tokens_to_ids(token)], known.mean(dim=0), atol=1e-6), token


def test_the_gpu_padding_rule_rounds_up_only_a_matrix_that_must_grow():
    assert embedding_rows(2058, 2048, 64) == 2112  # the Llama-shaped case
    assert embedding_rows(2058, 2048, 1) == 2058
    assert embedding_rows(151_680, 151_936, 64) == 151_936  # Qwen: spare rows are used, nothing grows


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_an_adapter_trained_with_padding_reloads_for_inference_with_the_same_logits(base_runs, kind):
    run, _, _ = base_runs[kind]
    latest = run.result.latest_checkpoint
    manifest = ckpt.read_manifest(latest)
    rows = run.model.get_input_embeddings().weight.shape[0]
    assert manifest["embedding_rows"] == rows
    if kind == "llama":
        assert rows % 64 == 0 and rows > len(run.job.tokenizer)  # padded as on a GPU
    from safetensors.torch import load_file

    saved = load_file(str(latest / "adapter_model.safetensors"))
    assert not [k for k in saved if "base_layer" in k], "the adapter must not carry whole embedding matrices"
    reloaded, tokenizer, _ = load_for_inference(latest, device=torch.device("cpu"))
    assert reloaded.get_input_embeddings().weight.shape[0] == rows
    ids = fixed_input(tokenizer)
    with torch.no_grad():
        expected = run.model(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())


# --- packing: the same per-row losses as padded batches ----------------------------------------------


def per_row_losses(objective: TargetOnlyLM, batch, counts: list[int]) -> list[float]:
    """Summed target loss of each row, in the order the batch holds them (targets are contiguous per row)."""
    hidden, targets, _ = objective.target_hidden(batch.input_ids, batch.attention_mask, batch.labels, batch.position_ids)
    _, head = objective.model.get_decoder(), objective.model.get_output_embeddings()
    losses = F.cross_entropy(head(hidden).float(), targets, reduction="none")
    assert len(losses) == sum(counts)
    return [float(part.sum()) for part in torch.split(losses, counts)]


def test_packed_rows_give_the_same_losses_as_padded_rows(prepared, tmp_path):
    from transformers import AutoModelForCausalLM

    from fizzbot.model.tokenizer import add_chat_tokens

    folder, _ = save_base(tmp_path / "llama", "llama", prepared)
    tokenizer = train_tiny_tokenizer(_tokenizer_texts(prepared / "train.jsonl"), 400)
    speakers = SpeakerMap.load(prepared / "speaker_map.json").tokens
    add_chat_tokens(tokenizer, speakers)
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    model.resize_token_embeddings(len(tokenizer))
    model.eval()
    contexts, targets = read_rows(prepared / "val.jsonl")
    rows = RowTokenizer(tokenizer, 128, tokenizer.convert_tokens_to_ids(speakers))(contexts[:40], targets[:40])
    objective = TargetOnlyLM(model)
    pack_length = 256
    plan = BatchPlan(batch_size=8, max_tokens=64 * pack_length, bucket_multiplier=1, bucketing=True, seed=0, pack_length=pack_length)
    (indices,) = plan_epoch(rows.lengths(), plan, epoch=0)  # every row in one micro-batch of packed sequences
    order = rows_of(indices)
    assert sorted(order.tolist()) == list(range(len(rows)))
    packed = collate_packed(rows, indices, tokenizer.pad_token_id, pack_length)
    packs = sequences_of(indices)
    assert len(packs) > 2 and any(len(p) > 3 for p in packs), "several rows per sequence, several sequences"
    assert packed.input_ids.shape == (len(packs), pack_length) and packed.attention_mask is None
    counts = [len(rows.row(i)) - max(int(rows.n_context[i]), 1) for i in order]
    assert packed.target_tokens == sum(counts)
    with torch.no_grad():
        together = per_row_losses(objective, packed, counts)
        alone = [per_row_losses(objective, collate(rows, np.array([i]), tokenizer.pad_token_id), [n])[0] for i, n in zip(order, counts)]
        padded = collate(rows, order, tokenizer.pad_token_id)
        assert float(objective(padded.input_ids, padded.attention_mask, padded.labels)) == pytest.approx(sum(alone), rel=1e-4)
        assert float(objective(packed.input_ids, None, packed.labels, packed.position_ids)) == pytest.approx(sum(alone), rel=1e-4)
    assert together == pytest.approx(alone, rel=1e-4, abs=1e-4)


def test_the_packing_plan_fills_sequences_and_batches_with_every_row_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 120, size=3000)
    plan = BatchPlan(batch_size=8, max_tokens=1024, bucket_multiplier=16, bucketing=True, seed=0, pack_length=256)
    batches = plan_epoch(lengths, plan, epoch=0)
    assert sorted(np.concatenate([rows_of(b) for b in batches]).tolist()) == list(range(3000))
    for batch in batches:
        packs = sequences_of(batch)
        assert len(packs) <= 1024 // 256
        assert all(lengths[p].sum() <= 256 for p in packs)
    used = sum(int(lengths[rows_of(b)].sum()) for b in batches)
    assert used / (len(batches) * 1024) > 0.97, "packed batches are nearly all real tokens"
    again = plan_epoch(lengths, plan, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))  # the same plan on every worker
    other = plan_epoch(lengths, plan, epoch=1)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))


def test_training_with_packing_runs_and_learns(prepared, tmp_path):
    cfg = tiny_config(prepared, tmp_path / "runs", "run.name=packed", "model.method=full", "training.packing=true",
                      "training.max_tokens_per_batch=1024", "training.pack_length=256", "training.max_steps=6",
                      "training.eval_steps=6", "training.save_steps=6")
    run = train_and_capture(cfg)
    losses = [m["loss"] for m in run.metrics("train")]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert all(m["padding_share"] < 0.2 for m in run.metrics("train"))


# --- fused kernels: the flag falls back on CPU, with the same losses ---------------------------------------


def test_fused_kernels_fall_back_on_cpu_with_one_log_line_and_the_same_losses(prepared, tmp_path, capfd):
    runs = {}
    for fused in ("false", "true"):
        cfg = tiny_config(prepared, tmp_path / "runs", f"run.name=fused-{fused}", "model.method=lora", "training.max_steps=3",
                          "training.eval_steps=3", "training.save_steps=3", f"training.fused_kernels={fused}")
        runs[fused] = train_and_capture(cfg)
    err = capfd.readouterr().err
    assert err.count("training.fused_kernels: plain PyTorch path (no CUDA device)") == 1
    plain = [m["loss"] for m in runs["false"].metrics("train")]
    fused = [m["loss"] for m in runs["true"].metrics("train")]
    assert plain == pytest.approx(fused, rel=1e-6)


@pytest.mark.parametrize("tie", [True, False])
def test_the_fused_loss_multiplies_by_the_heads_effective_weight(tie):
    """The fused kernel takes the head as a matrix: it must be the one the head's forward uses,
    chat-token rows (peft's trainable tokens) included."""
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from fizzbot.config import ModelConfig
    from fizzbot.model.build import embedding_module_names, lora_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=tie))
    model = get_peft_model(model, lora_config(ModelConfig(), [95, 96, 97], *embedding_module_names(model)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "trainable_tokens" in name:
                p += 1.0  # trained rows that differ from the base's
    head = model.get_base_model().get_output_embeddings()
    hidden = torch.randn(7, 32)
    weight = head_weight(head)
    assert torch.allclose(head(hidden), hidden @ weight.T, atol=1e-5)
    assert weight.requires_grad  # gradients reach the trained rows through it
    assert not torch.equal(weight[95:98], head.token_adapter.base_layer.weight[95:98])


@pytest.mark.parametrize("tie", ["true", "false"])
def test_the_fused_loss_branch_gives_the_chunked_loss_and_gradients(prepared, tie):
    """The objective's fused branch (Liger's kernel on a GPU) fed with an exact linear + cross-entropy
    here: the same loss and the same gradients, chat-token rows included, as the chunked path."""
    from fizzbot.config import load_config
    from fizzbot.model.build import create_tiny_base, prepare_model
    from fizzbot.model.tokenizer import add_chat_tokens

    tokenizer = train_tiny_tokenizer(_tokenizer_texts(prepared / "train.jsonl"), 400)
    speakers = SpeakerMap.load(prepared / "speaker_map.json").tokens
    chat_ids = add_chat_tokens(tokenizer, speakers)
    cfg = load_config(None, ["model.method=lora", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
                             "model.tiny.num_heads=2", "model.tiny.num_kv_heads=2", "model.tiny.intermediate_size=64",
                             f"model.tiny.tie_word_embeddings={tie}"])
    contexts, targets = read_rows(prepared / "val.jsonl")
    rows = RowTokenizer(tokenizer, 128, tokenizer.convert_tokens_to_ids(speakers))(contexts[:12], targets[:12])
    batch = collate(rows, np.arange(len(rows)), tokenizer.pad_token_id)

    def exact(weight, hidden, targets):
        return F.cross_entropy(hidden.float() @ weight.float().T, targets, reduction="sum")

    results = []
    import tempfile

    base = create_tiny_base(cfg.model, tokenizer, Path(tempfile.mkdtemp()) / "base", seed=0)
    for fused in (None, exact):
        torch.manual_seed(0)
        model = prepare_model(cfg.model, str(base), tokenizer, torch.device("cpu"), {}, chat_ids)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name or "trainable_tokens" in name:
                    p += 0.01 * torch.randn_like(p)  # away from the zero init, so every gradient path counts
        loss = TargetOnlyLM(model, fused_loss=fused)(batch.input_ids, batch.attention_mask, batch.labels)
        loss.backward()
        results.append((float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (plain, plain_grads), (fused_loss, fused_grads) = results
    assert fused_loss == pytest.approx(plain, rel=1e-5)
    assert plain_grads.keys() == fused_grads.keys() and any("trainable_tokens" in n for n in plain_grads)
    for name in plain_grads:
        assert torch.allclose(plain_grads[name], fused_grads[name], atol=1e-5, rtol=1e-4), name


def test_the_bucketed_plan_gives_the_workers_of_a_step_rows_of_one_length():
    """Batches are shuffled in runs of neighbours of a sorted pool: every row once, a different order
    each epoch, and the W x grad_accum_steps batches of one step (W, accum = 2, 2) about one length,
    where single shuffled batches would make one worker wait for another at every all-reduce."""
    lengths = np.random.default_rng(0).integers(8, 256, size=4096)
    plan = BatchPlan(batch_size=8, max_tokens=None, bucket_multiplier=16, bucketing=True, seed=0)
    batches = plan_epoch(lengths, plan, epoch=0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(4096))
    assert not all(np.array_equal(a, b) for a, b in zip(batches, plan_epoch(lengths, plan, epoch=1)))

    def step_time(batches):  # W = 2, accum = 2: a step lasts as long as its busier worker's padded work
        work = np.array([lengths[b].max() * len(b) for b in batches], dtype=float)
        per_worker = work[: len(work) // 4 * 4].reshape(-1, 2, 2).sum(axis=1)  # [step, worker]
        return per_worker.max(axis=1).sum() / per_worker.mean(axis=1).sum()  # 1.0: nobody ever waits

    shuffled_singly = [batches[i] for i in np.random.default_rng(1).permutation(len(batches))]
    assert step_time(batches) < 1.07 and step_time(shuffled_singly) > 1.15
    # and yet the steps themselves come in no order of length
    longest = np.array([lengths[b].max() for b in batches])
    assert abs(np.corrcoef(np.arange(len(longest)), longest)[0, 1]) < 0.2
