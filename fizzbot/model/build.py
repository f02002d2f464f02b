"""Building the model to train: the base (a Hugging Face id or folder, or the built-in tiny model),
its embeddings resized for the chat tokens, and the method (full, LoRA, QLoRA) applied.

The library objects (`LlamaConfig`, `BitsAndBytesConfig`, `LoraConfig`) are derived from the typed
ModelConfig by the small helpers below, so that QLoRA versus LoRA is a value, not a second script.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fizzbot.config import ModelConfig

TINY = "tiny"


def resolve_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    # bf16 on a CPU without native support runs ~100x slower than fp32 (docs/BENCHMARKS.md):
    # `auto` means fp32 there, bf16 on CUDA.
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, cfg.dtype)


def tiny_llama_config(cfg: ModelConfig, tokenizer):
    from transformers import LlamaConfig

    t = cfg.tiny
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads,
        max_position_embeddings=t.max_position_embeddings,
        tie_word_embeddings=t.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0,
    )


def bnb_config(cfg: ModelConfig, compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=cfg.bnb_4bit_double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=torch.uint8,
    )


def embedding_module_names(model) -> tuple[str, str | None]:
    """Names (last path component, as peft matches them) of the input embedding and of the output
    head when it is a separate matrix: `embed_tokens`/`lm_head` in Llama-like models, `wte` in GPT-2."""
    names = {id(module): name.rsplit(".", 1)[-1] for name, module in model.named_modules()}
    output = model.get_output_embeddings()
    return names[id(model.get_input_embeddings())], None if output is None or is_tied(model) else names[id(output)]


def lora_config(cfg: ModelConfig, trainable_token_ids: list[int], input_name: str = "embed_tokens", output_name: str | None = None):
    from peft import LoraConfig

    # The chat tokens' rows are trained (only those rows): in the input embedding, and in the output
    # head when it is a separate matrix (`output_name`); with tied embeddings peft ties the two for us.
    indices: dict[str, list[int]] = {input_name: list(trainable_token_ids)}
    if output_name is not None:
        indices[output_name] = list(trainable_token_ids)
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules,
        trainable_token_indices=indices,
        task_type="CAUSAL_LM",
        bias="none",
    )


def create_tiny_base(cfg: ModelConfig, tokenizer, folder: Path, seed: int) -> Path:
    """Initialise the built-in model from its config and save it, so every method loads it the same way.

    Written by hand rather than with save_pretrained, which writes on rank 0 only once
    torch.distributed is up, while every worker needs its own copy.
    """
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(cfg, tokenizer))
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(folder / "config.json")
    state = model.state_dict()
    if is_tied(model):
        state.pop("lm_head.weight", None)  # the same tensor as the input embedding
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def is_tied(model) -> bool:
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    return out is not None and inp.weight.data_ptr() == out.weight.data_ptr()


def vocab_multiple(cfg: ModelConfig, device: torch.device) -> int:
    """The padding rule's multiple: `auto` is 64 on CUDA (tensor cores like aligned shapes), 1 elsewhere."""
    if cfg.vocab_multiple == "auto":
        return 64 if device.type == "cuda" else 1
    return cfg.vocab_multiple


def embedding_rows(tokens: int, current_rows: int, multiple: int = 1) -> int:
    """Rows the embedding matrix needs for a tokenizer of `tokens` ids: the matrix as it is when the
    tokens fit (spare rows included), else `tokens` rounded up to `multiple`."""
    if tokens <= current_rows:
        return current_rows
    return -(-tokens // multiple) * multiple


@torch.no_grad()
def fit_embeddings(model, tokenizer, rows: int, base_tokens: int, speaker_names: dict[str, str]) -> None:
    """Give the model `rows` embedding rows, and meaningful rows to the tokens its base never trained.

    The tokens fizzbot added (ids from `base_tokens` up: the speaker tokens, <EOT>, a pad token) start
    from meaningful points, not noise, whether they took rows the resize created or spare rows the
    base already had (Qwen2.5 has 151,936 rows for 151,665 tokens): a speaker token at the mean
    embedding of its username's tokens (a prior that differs per speaker), the others at the mean of
    the trained rows. Rows past the tokenizer that the resize created are zero (never used). Output
    rows of an untied head get the same treatment from the output matrix.

    Training and inference both call this with the sizes the checkpoint records, so the base an
    adapter is loaded onto is the base it was trained on, row for row.
    """
    old_rows = model.get_input_embeddings().weight.shape[0]
    if rows != old_rows:
        model.resize_token_embeddings(rows, mean_resizing=False)
    tokens = len(tokenizer)
    known = min(base_tokens, old_rows)
    matrices = [model.get_input_embeddings().weight]
    if not is_tied(model) and model.get_output_embeddings() is not None:
        matrices.append(model.get_output_embeddings().weight)
    for weight in matrices:
        if weight.shape[0] > max(old_rows, tokens):
            weight[max(old_rows, tokens):] = 0
        if known >= tokens:
            continue
        mean = weight[:known].float().mean(dim=0)
        for token_id in range(known, tokens):
            token = tokenizer.convert_ids_to_tokens(token_id)
            row = mean
            name = speaker_names.get(token)
            if name:
                ids = [i for i in tokenizer(name, add_special_tokens=False)["input_ids"] if i < known]
                if ids:
                    row = weight[ids].float().mean(dim=0)
            weight[token_id] = row.to(weight.dtype)


def load_base(cfg: ModelConfig, base_path: str, device: torch.device, quantize: bool):
    from transformers import AutoModelForCausalLM

    dtype = resolve_dtype(cfg, device)
    kwargs = {
        "dtype": dtype,
        "attn_implementation": cfg.attn_implementation,
        "trust_remote_code": cfg.trust_remote_code,
    }
    if quantize:
        kwargs["quantization_config"] = bnb_config(cfg, dtype)
        kwargs["device_map"] = {"": (device.index if device.index is not None else torch.cuda.current_device()) if device.type == "cuda" else "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
    except OSError as exc:
        raise FileNotFoundError(
            f"model.base={base_path!r}: not a model folder, and not a hub id that can be loaded "
            f"(offline machines need a local folder): {exc}"
        ) from None
    if not quantize:
        model.to(device)
    return model


def prepare_model(cfg: ModelConfig, base_path: str, tokenizer, device: torch.device, speaker_names: dict[str, str],
                  chat_token_ids: list[int], gradient_checkpointing: bool | None = None, base_tokens: int | None = None,
                  fused_kernels: bool = False):
    """The model ready to train: base loaded, embeddings sized and initialised, method applied.

    `base_tokens` is the size of the base's own tokenizer (the ids past it are fizzbot's chat tokens);
    None means every id is the base's own (the built-in tiny model, built with the chat tokens).
    """
    quantize = cfg.method == "qlora"
    model = load_base(cfg, base_path, device, quantize)
    rows = embedding_rows(len(tokenizer), model.get_input_embeddings().weight.shape[0], vocab_multiple(cfg, device))
    fit_embeddings(model, tokenizer, rows, len(tokenizer) if base_tokens is None else base_tokens, speaker_names)
    model.config.pad_token_id = tokenizer.pad_token_id
    if fused_kernels:
        from fizzbot.model.kernels import apply_fused_kernels

        apply_fused_kernels(model, device)
    checkpointing = cfg.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    if cfg.method == "full":
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        return model
    from peft import get_peft_model

    # peft's prepare_model_for_kbit_training is not used: its fp32 upcast of every non-quantised
    # weight exists for fp16 training; with bf16 (or fp32 on CPU) compute it only makes every layer
    # slower. Freezing the base is get_peft_model's job; checkpointing needs input grads.
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, lora_config(cfg, chat_token_ids, *embedding_module_names(model)))
    model.train()
    return model
