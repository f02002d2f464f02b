"""Loading a checkpoint for inference: the model (full weights, or an adapter on its base), its
tokenizer with the chat tokens, its speaker map, and the rules its contexts are read by."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fizzbot.artifacts import checkpoint as ckpt
from fizzbot.chat.conversation import ChatRules
from fizzbot.chat.speakers import SpeakerMap


def load_chat_tokens(model_dir: str | Path, tokenizer_model: str | None = None):
    """(tokenizer, speaker map) of a checkpoint (a folder, or a URI fetched into the local cache), the
    tokenizer checked to hold every chat token whole."""
    from transformers import AutoTokenizer

    from fizzbot.model.tokenizer import check_chat_tokens

    folder = ckpt.fetch_checkpoint(model_dir)
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
    return tokenizer, speaker_map


def adapter_base(folder: Path) -> str | None:
    """The base model an adapter checkpoint was trained on (None: the folder holds full weights)."""
    if not (folder / "adapter_config.json").is_file():
        return None
    adapter = json.loads((folder / "adapter_config.json").read_text())
    return str(folder / ckpt.BASE_DIR) if (folder / ckpt.BASE_DIR).is_dir() else adapter.get("base_model_name_or_path")


def load_for_inference(model_dir: str | Path, *, device: torch.device, tokenizer_model: str | None = None, dtype: torch.dtype | None = None):
    """(model, tokenizer, speaker map) from a checkpoint (a folder, or a URI fetched into the local
    cache): full weights, or an adapter merged onto its base."""
    from transformers import AutoModelForCausalLM

    from fizzbot.model.build import fit_embeddings

    folder = ckpt.fetch_checkpoint(model_dir)
    tokenizer, speaker_map = load_chat_tokens(folder, tokenizer_model)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    base = adapter_base(folder)
    if base is not None:
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        manifest = ckpt.read_manifest(folder) or {}
        if manifest.get("embedding_rows"):
            # The base as training built it, row for row: the embedding size it trained with (GPU
            # training pads it to a multiple of 64) and the same starting rows for fizzbot's tokens.
            names = {s.token: s.username for s in speaker_map.speakers}  # as training's build_model
            base_tokens = manifest.get("base_tokens") or len(tokenizer)
            fit_embeddings(model, tokenizer, manifest["embedding_rows"], base_tokens, names)
        elif model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # a checkpoint from before the manifest said
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
