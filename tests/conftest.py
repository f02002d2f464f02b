"""Shared fixtures: one local Ray for the whole session, and the real Ubuntu IRC logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

UBUNTU_LOGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ubuntu-irc" / "logs"


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs, started once and shared by every test that needs it.

    `address="local"` starts a fresh instance even when a `ray start` head runs on this machine, so
    the tests never join (or tire) someone else's cluster.
    """
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # started by someone else in this process: use it, leave it running
        yield ray
        return
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,  # keep the test output small; errors still come back as exceptions
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def ubuntu_logs() -> Path:
    """The 153 real #ubuntu IRC logs in the workspace's shared/ folder (a user's clone has none)."""
    if not UBUNTU_LOGS.is_dir():
        pytest.skip(f"the Ubuntu IRC logs are not at {UBUNTU_LOGS} (they live in the workspace's shared/ folder)")
    return UBUNTU_LOGS


# --- a small trained model, shared by the generation and serving tests ---------------------------------

TINY_OVERRIDES = [
    "model.base=tiny",
    "model.method=full",
    "model.tiny.vocab_size=512",
    "model.tiny.hidden_size=64",
    "model.tiny.num_layers=2",
    "model.tiny.num_heads=2",
    "model.tiny.num_kv_heads=2",
    "model.tiny.intermediate_size=128",
    "model.tiny.max_position_embeddings=512",
    "training.num_workers=1",
    "training.batch_size=16",
    "training.max_seq_len=192",
    "training.learning_rate=3e-3",
    "training.warmup_steps=5",
    "training.eval_max_batches=4",
    "training.log_steps=10",
]


@pytest.fixture(scope="session")
def demo_prepared(tmp_path_factory) -> Path:
    """The demo corpus, prepared in one process (no Ray): a folder with train/val JSONL and a speaker map.

    7 personas have their own token and 2 share the others token (so the guest token is trained); the
    context budget differs from the defaults the training config keeps, so the checkpoint shows which
    it records (the prepared one: see test_chat_contract). The others token is faceless here
    (data.name_others=false), as the original tool had it: the served guest is named back by the
    context's one newcomer; test_serve_names serves a copy whose long tail speaks by name.
    """
    from fizzbot.config import load_config
    from fizzbot.data.demo import write_demo_corpus
    from fizzbot.data.pipeline import prepare

    root = tmp_path_factory.mktemp("demo")
    write_demo_corpus(root / "corpus", seed=0, days=10)
    cfg = load_config(None, [
        f"data.inputs=[{root / 'corpus'}]", f"data.output={root / 'prepared'}", "data.max_speakers=8",
        "data.max_context_messages=6", "data.max_context_chars=600", "data.name_others=false",
    ])
    prepare(cfg.data, use_ray=False, report=False)
    return root / "prepared"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, demo_prepared) -> Path:
    """A full checkpoint of the tiny model trained for a few dozen steps on the demo data (no Ray)."""
    from fizzbot.config import load_config
    from fizzbot.train.trainer import train

    runs = tmp_path_factory.mktemp("runs")
    cfg = load_config(
        None,
        TINY_OVERRIDES
        + [f"data.path={demo_prepared}", f"run.dir={runs}", "run.name=fixture", "training.max_steps=40", "training.eval_steps=40", "training.save_steps=40"],
    )
    result = train(cfg, use_ray=False)
    assert result.best_checkpoint is not None
    return result.best_checkpoint


# --- two communities' adapters on one shared base --------------------------------------------------------


@pytest.fixture(scope="session")
def two_adapters(tmp_path_factory, demo_prepared) -> dict[str, Path]:
    """Two LoRA adapters of one tiny base, trained on two different prepared corpora (different demo
    chats, 12 and 6 speaker tokens: distinct speaker maps). Returns {"a": checkpoint, "b": checkpoint}."""
    import json

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fizzbot.config import load_config
    from fizzbot.data.demo import write_demo_corpus
    from fizzbot.data.pipeline import prepare
    from fizzbot.model.tokenizer import train_tiny_tokenizer
    from fizzbot.train.trainer import train

    root = tmp_path_factory.mktemp("adapters")
    texts = [json.loads(line)["target"] for line in (demo_prepared / "train.jsonl").open()]
    tokenizer = train_tiny_tokenizer(texts, 512)
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    prepared = {"a": demo_prepared}
    write_demo_corpus(root / "corpus-b", seed=1, days=6)
    cfg = load_config(None, [f"data.inputs=[{root / 'corpus-b'}]", f"data.output={root / 'prepared-b'}", "data.max_speakers=6"])
    prepare(cfg.data, use_ray=False, report=False)
    prepared["b"] = root / "prepared-b"
    training = [o for o in TINY_OVERRIDES if not o.startswith("model.")]
    found = {}
    for name, data in prepared.items():
        cfg = load_config(None, training + [
            "model.method=lora", f"model.base={root / 'base'}", "model.lora_r=8", f"data.path={data}", f"run.dir={root / 'runs'}",
            f"run.name={name}", "training.max_steps=12", "training.eval_steps=12", "training.save_steps=12",
        ])
        result = train(cfg, use_ray=False)
        assert result.best_checkpoint is not None
        found[name] = result.best_checkpoint
    return found
