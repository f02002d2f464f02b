"""Many communities on one base: LoRA adapters kept apart from the base weights, chosen per row.

One base model is loaded once; each adapter (one community's fine-tune) adds, per linear layer, a
low-rank delta `scale * B(A x)`, and its own rows for the chat tokens (its speakers and <EOT>: two
communities' `<S3>` are different people, often different ids). Rows of different adapters share
every batch: the base matmul runs once for all of them, then each token gets its own adapter's delta
(S-LoRA's and Punica's segmented/gathered LoRA: a Triton BGMV kernel pair on CUDA, kernels.py; on
the CPU one dense product over every adapter's A, masked per token, then one over every B). peft's
own multi-adapter path loops over adapters in Python per layer, which a CUDA graph cannot hold.

Storage is fixed at start: `max_adapters` slots of rank `max_rank` for every linear layer of the
decoder, and `max_token_rows` chat-token rows per adapter, so adding an adapter to a running server
writes into a free slot (the captured graphs read the same tensors) and needs no restart.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fizzbot.infer.attention import current

PREFIX = "base_model.model."


@dataclass
class AdapterWeights:
    folder: Path
    base: str
    rank: int
    scale: float
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # path -> (A [r, in], B [out, r])
    input_rows: dict[int, torch.Tensor] = field(default_factory=dict)  # token id -> embedding row
    output_rows: dict[int, torch.Tensor] = field(default_factory=dict)  # token id -> output-head row (untied heads)


def read_adapter(folder: str | Path, base_rows: int | None = None) -> AdapterWeights:
    """A peft LoRA checkpoint: its A/B matrices and the chat-token rows it trained (or resized in)."""
    from safetensors.torch import load_file

    from fizzbot.artifacts.loading import adapter_base

    folder = Path(folder)
    base = adapter_base(folder)
    if base is None:
        raise ValueError(f"{folder}: not an adapter checkpoint (no adapter_config.json); serve it as serve.model_dir")
    config = json.loads((folder / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError(f"{folder}: only plain LoRA adapters (one rank and alpha, no DoRA) can share a base")
    rank = int(config["r"])
    scale = config["lora_alpha"] / (math.sqrt(rank) if config.get("use_rslora") else rank)
    state = load_file(str(folder / "adapter_model.safetensors"))
    weights = AdapterWeights(folder, str(Path(base).resolve()) if Path(base).exists() else base, rank, scale)
    for key, tensor in state.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if name.endswith(".lora_A.weight"):
            module = name[: -len(".lora_A.weight")]
            weights.modules[module] = (tensor, state[key.replace(".lora_A.", ".lora_B.")])
    indices = config.get("trainable_token_indices") or {}
    for key, tensor in state.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        layer = name.split(".token_adapter.")[0].rsplit(".", 1)[-1] if ".token_adapter." in name else None
        rows = weights.output_rows if layer == "lm_head" else weights.input_rows
        if name.endswith("token_adapter.base_layer.weight") and base_rows is not None:
            for token in range(base_rows, tensor.shape[0]):  # rows the base does not have (a resized vocabulary)
                rows[token] = tensor[token]
        elif name.endswith("token_adapter.trainable_tokens_delta"):
            ids = indices.get(layer) if isinstance(indices, dict) else indices
            if ids is None:
                ids = indices.get("embed_tokens", [])
            for token, row in zip(ids, tensor):
                rows[int(token)] = row  # peft's trainable tokens replace the rows (index_copy), not add to them
    return weights


def delta_torch(x: torch.Tensor, a: torch.Tensor, b_dense: torch.Tensor, ids: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Per-token LoRA deltas for x [T, in]: a [adapters, r, in], b_dense [out, adapters * r], ids [T] (-1: none)."""
    adapters, rank = a.shape[0], a.shape[1]
    shrunk = (x @ a.reshape(adapters * rank, -1).T).view(-1, adapters, rank)
    own = (ids[:, None] == torch.arange(adapters, device=ids.device)[None, :]).to(shrunk.dtype)
    own = own * scales.to(shrunk.dtype)[None, :]
    return (shrunk * own[:, :, None]).view(-1, adapters * rank) @ b_dense.T


class LoRALinear(nn.Module):
    """A base linear layer plus each token's adapter delta (read from the batch's adapter ids)."""

    def __init__(self, base: nn.Linear, adapters: int, rank: int, scales: torch.Tensor):
        super().__init__()
        self.base = base
        dtype, device = base.weight.dtype, base.weight.device
        self.a = torch.zeros(adapters, rank, base.in_features, dtype=dtype, device=device)
        # B stored [out, adapters, rank]: the CPU path reads it as one [out, adapters * rank] matrix,
        # the Triton kernel as [adapters, out, rank] through strides.
        self.b = torch.zeros(base.out_features, adapters, rank, dtype=dtype, device=device)
        self.scales = scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        batch = current()
        if batch is None or batch.adapter_ids is None:
            return y
        from fizzbot.infer import kernels

        flat_x, flat_y = x.reshape(-1, x.shape[-1]), y.view(-1, y.shape[-1])
        if kernels.available(x.device):
            kernels.lora_expand(kernels.lora_shrink(flat_x, self.a, batch.adapter_ids), self.b.permute(1, 0, 2), batch.adapter_ids, self.scales, flat_y)
        else:
            flat_y += delta_torch(flat_x, self.a, self.b.view(self.b.shape[0], -1), batch.adapter_ids, self.scales).to(y.dtype)
        return y


class AdapterEmbedding(nn.Module):
    """The base embedding, with each adapter's own rows for its chat tokens."""

    def __init__(self, base: nn.Embedding, lora: "MultiLoRA"):
        super().__init__()
        self.base, self.lora = base, lora
        self.weight = base.weight  # what transformers reads for sizes and dtypes

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.base.weight.shape[0]
        out = self.base(ids.clamp(max=rows - 1))
        batch = current()
        if batch is None or batch.adapter_ids is None:
            return out
        flat, adapters = ids.reshape(-1), batch.adapter_ids
        slot = self.lora.row_of[adapters, flat]
        own = self.lora.input_rows[adapters, slot.clamp(min=0)]
        return torch.where((slot >= 0)[:, None], own, out.reshape(flat.shape[0], -1)).view_as(out)


class AdapterHead(nn.Module):
    """The base output head widened to the engine's vocabulary, each row's adapter filling its own
    chat tokens' logits (ids it has no row for, past the base's, stay at -inf)."""

    def __init__(self, base: nn.Module, lora: "MultiLoRA"):
        super().__init__()
        self.base, self.lora = base, lora
        self.weight = base.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.base(hidden)
        extra = self.lora.vocab - logits.shape[-1]
        if extra > 0:
            logits = F.pad(logits, (0, extra), value=float("-inf"))
        batch = current()
        if batch is None or batch.logit_adapter_ids is None:
            return logits
        flat = hidden.reshape(-1, hidden.shape[-1])
        adapters = batch.logit_adapter_ids
        own = torch.einsum("th,trh->tr", flat, self.lora.output_rows[adapters].to(flat.dtype))  # [tokens, rows]
        wide = F.pad(logits.reshape(flat.shape[0], -1), (0, 1))  # a spare column takes the padding rows' writes
        wide.scatter_(1, self.lora.row_ids[adapters], own.to(wide.dtype))
        return wide[:, :-1].view_as(logits)


class MultiLoRA:
    """Adapter slots wired into a base model (its linear layers, embedding and head wrapped in place)."""

    def __init__(self, model, max_adapters: int, max_rank: int, max_token_rows: int, vocab: int):
        self.model, self.max_adapters, self.max_rank, self.max_token_rows, self.vocab = model, max_adapters, max_rank, max_token_rows, vocab
        embed = model.get_input_embeddings()
        device, dtype = embed.weight.device, embed.weight.dtype
        hidden = embed.weight.shape[1]
        self.base_rows = embed.weight.shape[0]
        self.tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight.data_ptr() == embed.weight.data_ptr()
        self.scales = torch.zeros(max_adapters, dtype=torch.float32, device=device)
        self.row_of = torch.full((max_adapters, vocab), -1, dtype=torch.long, device=device)
        self.row_ids = torch.full((max_adapters, max_token_rows), vocab, dtype=torch.long, device=device)
        self.input_rows = torch.zeros(max_adapters, max_token_rows, hidden, dtype=dtype, device=device)
        self.output_rows = torch.zeros(max_adapters, max_token_rows, hidden, dtype=dtype, device=device)
        self.layers: dict[str, LoRALinear] = {}
        head = model.get_output_embeddings()
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                path = f"{name}.{child_name}" if name else child_name
                if isinstance(child, nn.Linear) and child is not head:
                    wrapped = LoRALinear(child, max_adapters, max_rank, self.scales)
                    setattr(module, child_name, wrapped)
                    self.layers[path] = wrapped
        model.set_input_embeddings(AdapterEmbedding(embed, self))
        model.set_output_embeddings(AdapterHead(head, self))
        self.loaded: dict[int, AdapterWeights] = {}

    def load(self, index: int, weights: AdapterWeights) -> None:
        """Write an adapter into slot `index` (a slot no row uses)."""
        if index >= self.max_adapters:
            raise ValueError(f"room for {self.max_adapters} adapters (serve.max_adapters) is full")
        if weights.rank > self.max_rank:
            raise ValueError(f"{weights.folder}: LoRA rank {weights.rank} is over this server's {self.max_rank} (serve.max_lora_rank)")
        rows = sorted(set(weights.input_rows) | set(weights.output_rows))
        if len(rows) > self.max_token_rows or (rows and rows[-1] >= self.vocab):
            raise ValueError(f"{weights.folder}: {len(rows)} chat-token rows up to id {rows[-1] if rows else 0} do not fit "
                             f"({self.max_token_rows} rows below id {self.vocab})")
        unknown = [m for m in weights.modules if self._layer(m) is None]
        if unknown:
            raise ValueError(f"{weights.folder}: adapts {unknown[0]}, which is not a linear layer of the base")
        with torch.no_grad():
            for layer in self.layers.values():
                layer.a[index].zero_()
                layer.b[:, index].zero_()
            for path, (a, b) in weights.modules.items():
                layer = self._layer(path)
                layer.a[index, : weights.rank].copy_(a)
                layer.b[:, index, : weights.rank].copy_(b)
            self.row_of[index].fill_(-1)
            self.row_ids[index].fill_(self.vocab)
            head = self.model.get_output_embeddings().base.weight
            embed = self.model.get_input_embeddings().base.weight
            for i, token in enumerate(rows):
                self.row_of[index, token] = i
                self.row_ids[index, i] = token
                inp = weights.input_rows.get(token)
                if inp is None:
                    inp = embed[token] if token < self.base_rows else torch.zeros_like(embed[0])
                out = weights.output_rows.get(token)
                if out is None:
                    out = inp if self.tied else (head[token] if token < head.shape[0] else torch.zeros_like(head[0]))
                self.input_rows[index, i].copy_(inp)
                self.output_rows[index, i].copy_(out)
            self.scales[index] = weights.scale
        self.loaded[index] = weights

    def _layer(self, path: str) -> LoRALinear | None:
        return self.layers.get(path) or self.layers.get(path.removeprefix("model.")) or self.layers.get("model." + path)


def engine_from_adapters(adapters: dict[str, str | Path], *, device: str = "auto", max_adapters: int = 16, max_rank: int | None = None,
                         max_token_rows: int = 128, compile: bool = False, **engine_kwargs):
    """An engine serving several LoRA adapters of one base, unmerged; the first is the default model.
    `compile` captures the decode step as CUDA graphs (GPU only); the rest goes to GenerationEngine."""
    from transformers import AutoModelForCausalLM

    from fizzbot.artifacts.loading import load_chat_tokens
    from fizzbot.infer.engine import GenerationEngine, resolve_device

    if not adapters:
        raise ValueError("serve.adapters is empty")
    dev = resolve_device(device)
    first_name, first_folder = next(iter(adapters.items()))
    first = read_adapter(first_folder)
    model = AutoModelForCausalLM.from_pretrained(first.base, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32).to(dev).eval()
    tokenizer, speaker_map = load_chat_tokens(first_folder)
    rows = model.get_input_embeddings().weight.shape[0]
    # Room past the base's rows for chat tokens that resized its vocabulary, a multiple of 64.
    vocab = -(-max(rows, len(tokenizer) + max_token_rows) // 64) * 64
    lora = MultiLoRA(model, max(max_adapters, len(adapters)), max_rank or max(read_adapter(f).rank for f in adapters.values()),
                     max_token_rows, vocab)
    engine = GenerationEngine(model, tokenizer, speaker_map, device=dev, lora=lora, max_adapters=lora.max_adapters,
                              graphs=compile and dev.type == "cuda", **engine_kwargs)
    for name, folder in adapters.items():
        engine.add_adapter(name, folder)
    engine.adapter_index[None] = engine.adapter_index[first_name]
    return engine
