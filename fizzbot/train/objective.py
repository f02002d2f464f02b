"""The training objective: next-token loss on the target only, computing logits only where it counts.

A causal LM's head turns every position's hidden state into a vocabulary-sized row of logits; for a
chat window, most positions are context whose loss is masked anyway. Here the decoder runs on the
whole sequence, the hidden states at target positions are gathered, and only those go through the
head, in chunks whose logits (where they are large) are recomputed in the backward pass instead of
being stored. With a 152k vocabulary and targets a tenth of the tokens, that is most of the head's
time and memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from fizzbot.train.data import IGNORE_INDEX, collate

# Rows of logits materialised at once (x vocabulary x 4 bytes): 4096 x 152k is 2.5 GB in fp32.
LOSS_CHUNK = 4096
# A chunk's logits over this size are recomputed in the backward pass instead of kept for it; under it
# (a small vocabulary: the tiny model's 4k is 70 MB a chunk) keeping them costs little and saves the
# head's forward a second time, a tenth of a CPU step.
RECOMPUTE_LOGITS_BYTES = 256 << 20


def causal_lm_parts(model):
    """(decoder, head) of a causal LM, looking through peft wrappers; the head is the peft-aware module."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_decoder(), inner.get_output_embeddings()


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return F.cross_entropy(logits, labels, reduction="sum")


class TargetOnlyLM(torch.nn.Module):
    """Wraps a causal LM so that forward() returns the summed target loss (DDP wraps this module).

    `fused_loss` (Liger's fused linear + cross-entropy, `fizzbot.model.kernels`) replaces the chunked
    head + loss in training when given; evaluation keeps the chunked path (it needs the logits).
    Packed batches pass `position_ids` and no attention mask (see `collate_packed`).
    """

    def __init__(self, model: torch.nn.Module, chunked: bool = True, fused_loss=None):
        super().__init__()
        self.model = model
        self.chunked = chunked
        self.fused_loss = fused_loss

    def target_hidden(self, input_ids, attention_mask, labels, position_ids=None):
        """Hidden states at the positions that predict a target token, and those tokens."""
        decoder, _ = causal_lm_parts(self.model)
        hidden = decoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        shift_labels = labels[:, 1:]
        where = shift_labels != IGNORE_INDEX
        return hidden[:, :-1][where], shift_labels[where], where

    def forward(self, input_ids, attention_mask, labels, position_ids=None):
        if not self.chunked:
            logits = self.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).logits
            return F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            )
        hidden, targets, _ = self.target_hidden(input_ids, attention_mask, labels, position_ids)
        _, head = causal_lm_parts(self.model)
        if self.fused_loss is not None and torch.is_grad_enabled():
            from fizzbot.model.kernels import head_weight

            return self.fused_loss(head_weight(head), hidden, targets).float()
        total = hidden.new_zeros((), dtype=torch.float32)
        vocab = head.weight.shape[0] if hasattr(head, "weight") else None
        for start in range(0, hidden.shape[0], LOSS_CHUNK):
            h = hidden[start : start + LOSS_CHUNK]
            y = targets[start : start + LOSS_CHUNK]
            if torch.is_grad_enabled() and (vocab is None or h.shape[0] * vocab * 4 > RECOMPUTE_LOGITS_BYTES):
                total = total + checkpoint(_chunk_loss, head, h, y, use_reentrant=False)
            else:
                total = total + _chunk_loss(head, h, y)
        return total

    @torch.no_grad()
    def evaluate_batch(self, input_ids, attention_mask, labels, speaker_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per row: summed target loss, target tokens, and logits over `speaker_ids` at the row's
        first target position (where the model says who speaks next; zeros for a row with no target)."""
        hidden, targets, where = self.target_hidden(input_ids, attention_mask, labels)
        _, head = causal_lm_parts(self.model)
        rows = input_ids.shape[0]
        token_loss = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
        speaker_logits = hidden.new_zeros((rows, len(speaker_ids)), dtype=torch.float32)
        # Index (into the gathered positions) of each row's first target position.
        counts = where.sum(dim=1)
        firsts = torch.cumsum(counts, 0) - counts
        for start in range(0, hidden.shape[0], LOSS_CHUNK):
            logits = head(hidden[start : start + LOSS_CHUNK]).float()
            token_loss[start : start + logits.shape[0]] = F.cross_entropy(logits, targets[start : start + LOSS_CHUNK], reduction="none")
            in_chunk = (firsts >= start) & (firsts < start + logits.shape[0]) & (counts > 0)
            if in_chunk.any():
                speaker_logits[in_chunk] = logits[firsts[in_chunk] - start][:, speaker_ids]
        row_of = where.nonzero()[:, 0]  # gathered positions are in row-major order
        row_loss = torch.zeros(rows, dtype=torch.float32, device=hidden.device).index_add_(0, row_of, token_loss)
        return row_loss, counts, speaker_logits


@dataclass
class RowScores:
    """A model's scores of tokenised rows, one entry per row (in the order of the indices scored)."""

    rows: np.ndarray  # the indices scored
    loss: np.ndarray  # summed target loss (nats)
    tokens: np.ndarray  # target tokens
    speaker_logits: np.ndarray  # [rows, speakers] at the first target position


@torch.no_grad()
def score_rows(objective: TargetOnlyLM, rows, batches: list[np.ndarray], pad_id: int, speaker_ids: torch.Tensor, device: torch.device) -> RowScores:
    """Score `rows` batch by batch (each batch an array of row indices): what evaluation reads."""
    was_training = objective.training
    objective.eval()
    losses, tokens, logits = [], [], []
    for indices in batches:
        b = collate(rows, indices, pad_id)
        loss, n, speakers = objective.evaluate_batch(b.input_ids.to(device), b.attention_mask.to(device), b.labels.to(device), speaker_ids)
        losses.append(loss.cpu().numpy())
        tokens.append(n.cpu().numpy())
        logits.append(speakers.cpu().numpy())
    objective.train(was_training)
    width = len(speaker_ids)
    return RowScores(
        np.concatenate(batches).astype(np.int64) if batches else np.zeros(0, np.int64),
        np.concatenate(losses) if losses else np.zeros(0),
        np.concatenate(tokens) if tokens else np.zeros(0),
        np.concatenate(logits) if logits else np.zeros((0, width)),
    )
