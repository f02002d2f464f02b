"""Fused GPU kernels (Liger-Kernel) for the hot paths of training, behind `training.fused_kernels`.

Liger-Kernel is Triton: it runs on CUDA only and is an optional dependency (`pip install
fizzbot[gpu]`). Without a GPU, without the library, or for a model family it does not know, training
takes the plain PyTorch path and says so in one log line. What it replaces:

- RMSNorm, RoPE and the SwiGLU MLP of each decoder layer (fewer kernel launches, and the MLP keeps
  two activations for the backward pass instead of four);
- the output head + cross-entropy over the target positions (`fused_linear_cross_entropy`): logits
  are computed, reduced and turned into gradients chunk by chunk inside one kernel, never stored.
"""

from __future__ import annotations

import sys

import torch


def _log(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)


def liger_available(device: torch.device) -> str | None:
    """None when Liger-Kernel can run here, else why not (one phrase)."""
    if device.type != "cuda":
        return "no CUDA device"
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        return "liger-kernel is not installed (pip install 'fizzbot[gpu]')"
    return None


def apply_fused_kernels(model, device: torch.device) -> bool:
    """Swap RMSNorm, RoPE and SwiGLU of a loaded (not yet peft-wrapped) model for Liger's, in place.

    Returns whether it did; the reason it did not is logged once. The loss is fused separately
    (`fused_linear_cross_entropy`), over the target positions only.
    """
    reason = liger_available(device)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if reason is None:
        from liger_kernel.transformers import monkey_patch

        known = getattr(monkey_patch, "MODEL_TYPE_TO_APPLY_LIGER_FN", {})
        if model_type not in known:
            reason = f"Liger-Kernel has no kernels for model type {model_type!r}"
    if reason is not None:
        _log(f"training.fused_kernels: plain PyTorch path ({reason})")
        return False
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    # The loss stays ours (target positions only): no cross-entropy patch of the model's forward.
    _apply_liger_kernel_to_instance(
        model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
    )
    _log(f"training.fused_kernels: Liger RMSNorm, RoPE and SwiGLU on {model_type}")
    return True


def fused_linear_cross_entropy(device: torch.device):
    """Liger's fused linear + cross-entropy (summed) as `loss(weight, hidden, targets)`, or None
    where it cannot run (the caller keeps its chunked path)."""
    if liger_available(device) is not None:
        return None
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss(reduction="sum")


def head_weight(head: torch.nn.Module) -> torch.Tensor:
    """The output head's effective weight matrix, as its forward uses it.

    Under peft the chat-token rows live in a trainable-tokens adapter beside the frozen base matrix;
    its merged weight (base rows with the trained rows copied in, differentiable in those rows) is
    what a fused kernel must multiply by.
    """
    adapter = getattr(head, "token_adapter", None)
    if adapter is not None and getattr(adapter, "active_adapters", None):
        return adapter.get_merged_weights(adapter.active_adapters)
    return head.weight
