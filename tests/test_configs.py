"""The typed config: every shipped YAML loads, and mistakes are refused with the key and the fix named."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from fizzbot.config import ConfigError, FizzbotConfig, load_config, replace

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
SERVE_APP = REPO / "configs" / "serve_app.yaml"  # a Ray Serve config file, not a fizzbot one
FIZZBOT_CONFIGS = [p for p in CONFIGS if p != SERVE_APP]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_the_configs_folder_holds_the_configs_we_ship():
    names = {p.name for p in CONFIGS}
    assert {"demo.yaml", "train_cpu.yaml", "train_gpu_qlora.yaml", "serve.yaml", "serve_app.yaml"} <= names


@pytest.mark.parametrize("path", FIZZBOT_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_validates_and_round_trips(path):
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text())
    # What the file says is what the config holds (no key silently dropped or renamed).
    for section, values in raw.items():
        for key, value in values.items():
            if not isinstance(value, dict):
                assert getattr(getattr(cfg, section), key) == value, f"{path.name}: {section}.{key}"
    assert FizzbotConfig.model_validate(yaml.safe_load(cfg.to_yaml())) == cfg


def test_the_serve_app_file_points_at_a_fizzbot_config_that_loads():
    app_file = yaml.safe_load(SERVE_APP.read_text())
    (app,) = app_file["applications"]
    module_name, _, attr = app["import_path"].partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attr))
    args = module.AppArgs.model_validate(app["args"])  # the builder's own argument schema
    assert args.config and not Path(args.config).is_absolute()
    cfg = load_config(REPO / args.config, args.overrides)  # relative to the repo root, where `serve run` runs
    assert cfg.serve.host == app_file["http_options"]["host"]
    assert cfg.serve.port == app_file["http_options"]["port"]
    # Ray's own schema of the file takes it, the proxy's JSON errors for a dead replica included.
    from ray.serve.schema import ServeDeploySchema

    from fizzbot.serve.guard import CONTROLLER_OPTIONS

    assert ServeDeploySchema.model_validate(app_file).controller_options.runtime_env == CONTROLLER_OPTIONS["runtime_env"]


def test_an_unknown_key_in_a_file_is_refused_with_a_did_you_mean(tmp_path):
    path = write(tmp_path, "training:\n  max_step: 50\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "training.max_step: unknown key (did you mean training.max_steps?)" in message


@pytest.mark.parametrize(
    "override, expected",
    [
        ("training.max_step=5", "training.max_step: unknown key (did you mean training.max_steps?)"),
        ("trainig.max_steps=5", "trainig: unknown key (did you mean training?)"),
        ("model.tiny.hidden=64", "model.tiny.hidden: unknown key (did you mean model.tiny.hidden_size?)"),
    ],
)
def test_an_unknown_override_is_refused_with_a_did_you_mean(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert expected in str(info.value)


@pytest.mark.parametrize(
    "override, key, detail",
    [
        ("training.max_steps=0", "training.max_steps", "greater than or equal to 1 (got 0)"),
        ("training.batching=fast", "training.batching", "'bucket' or 'pad' (got 'fast')"),
        ("model.method=qlora4", "model.method", "(got 'qlora4')"),
        ("data.val_split=1.5", "data.val_split", "(got 1.5)"),
        ("training.learning_rate=fast", "training.learning_rate", "(got 'fast')"),
        ("run.name=my run", "run.name", "(got 'my run')"),
    ],
)
def test_a_bad_value_names_the_key_and_what_it_got(override, key, detail):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    line = next(l.strip() for l in str(info.value).splitlines() if l.strip().startswith(key + ":"))
    assert detail in line


def test_bad_combinations_name_both_keys_and_the_fix():
    with pytest.raises(ConfigError, match=r"data.min_context_messages \(9\) is larger than data.max_context_messages \(3\)"):
        load_config(None, ["data.min_context_messages=9", "data.max_context_messages=3"])
    with pytest.raises(ConfigError, match=r"model.tiny.hidden_size \(100\) must be a multiple of model.tiny.num_heads \(3\)"):
        load_config(None, ["model.tiny.hidden_size=100", "model.tiny.num_heads=3"])
    with pytest.raises(ConfigError, match=r"does not combine with model.method=qlora.*use model.method=lora or training.deepspeed=false"):
        load_config(None, ["training.use_gpu=true", "training.deepspeed=true", "model.method=qlora"])


def test_overrides_apply_over_the_file_in_order(tmp_path):
    path = write(tmp_path, "training:\n  max_steps: 10\n  batch_size: 4\nmodel:\n  method: full\n")
    cfg = load_config(path, [
        "training.max_steps=50",
        "model.tiny.hidden_size=64",
        "data.inputs=[a.json, b]",
        "training.learning_rate=1e-3",  # YAML 1.1 reads this as a string; the float field takes it
        "serve.autoscaling={min_replicas: 1, max_replicas: 3}",
        "run.name=night-run",
        "model.method=lora",
        "model.method=qlora",  # the last one wins
        "generate.seed=",  # empty: null
    ])
    assert cfg.training.max_steps == 50 and cfg.training.batch_size == 4  # untouched keys keep the file's value
    assert cfg.model.tiny.hidden_size == 64 and cfg.model.tiny.num_layers == 4
    assert cfg.data.inputs == ["a.json", "b"]
    assert cfg.training.learning_rate == pytest.approx(1e-3)
    assert cfg.serve.autoscaling.max_replicas == 3
    assert cfg.run.name == "night-run"
    assert cfg.model.method == "qlora"
    assert cfg.generate.seed is None


def test_replace_returns_a_validated_copy():
    cfg = load_config(None, ["training.max_steps=10"])
    other = replace(cfg, "training.max_steps=20", "model.method=full")
    assert (other.training.max_steps, other.model.method) == (20, "full")
    assert (cfg.training.max_steps, cfg.model.method) == (10, "lora")
    with pytest.raises(ConfigError, match="training.max_steps"):
        replace(cfg, "training.max_steps=-1")


@pytest.mark.parametrize("text", ["training.max_steps", "=5", "training..max_steps=5"])
def test_a_malformed_override_is_refused(text):
    with pytest.raises(ConfigError, match="override"):
        load_config(None, [text])


def test_a_bad_file_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "training: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
