"""Loading a checkpoint for inference: the model (full weights, or an adapter on its base), its
tokenizer with the chat tokens, its speaker map, and the rules its contexts are read by."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fizzbot.artifacts import checkpoint as ckpt
from fizzbot.chat.conversation import ChatRules
from fizzbot.chat.speakers import SpeakerMap


def load_for_inference(model_dir: str | Path, *, device: torch.device, tokenizer_model: str | None = None, dtype: torch.dtype | None = None):
    """(model, tokenizer, speaker map) from a checkpoint: full weights, or an adapter merged onto its base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fizzbot.model.tokenizer import check_chat_tokens

    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"model directory {folder} does not exist")
    ckpt.check_loadable(folder)
    map_path = folder / ckpt.SPEAKER_MAP
    if not map_path.is_file():
        raise FileNotFoundError(f"{folder}: no speaker_map.json (is this a fizzbot checkpoint?)")
    speaker_map = SpeakerMap.load(map_path)
    tokenizer_source = tokenizer_model or (folder if (folder / "tokenizer_config.json").is_file() else None)
    if tokenizer_source is None:
        raise FileNotFoundError(
            f"{folder} holds no tokenizer: pass --tokenizer-model PATH (or generate.tokenizer_model) "
            "pointing at the run's tokenizer/ folder"
        )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    check_chat_tokens(tokenizer, speaker_map.tokens)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        adapter = json.loads((folder / "adapter_config.json").read_text())
        base = folder / ckpt.BASE_DIR if (folder / ckpt.BASE_DIR).is_dir() else adapter.get("base_model_name_or_path")
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        # Merged into the (unquantised) base weights: one matrix per layer, no adapter cost per token.
        model = PeftModel.from_pretrained(model, folder).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    model.to(device).eval()
    return model, tokenizer, speaker_map


def chat_rules(model_dir: str | Path, unknown_speakers: str = "guest") -> ChatRules:
    """How contexts are read for this checkpoint: the data settings in its fizzbot.yaml (context and
    message budgets, opted-out people; none for a folder without one) and the unknown-speaker policy."""
    import yaml

    path = Path(model_dir) / ckpt.CONFIG_FILE
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        config = {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    data = config.get("data") if isinstance(config, dict) else None
    return ChatRules.from_data_config(data if isinstance(data, dict) else {}, unknown_speakers)
