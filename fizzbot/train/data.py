"""From {context, target} rows to batches: tokenising, target-only labels, batching by length.

A tokenised row is its ids and `n_context`, the number of leading ids that are context (and BOS):
the loss covers ids[n_context:] only, i.e. `<Sk> message <EOT>` (with `training.train_on_context`,
every id after the first, so the training loss is not the validation loss's measure). Over-long rows
lose their oldest context messages, whole, never the target.

Batches are planned globally, per epoch, from a seeded permutation: rows are sorted by length inside
pools of `batch_size x bucket_size_multiplier`, cut into batches, and the batches shuffled in pairs of
neighbours (so two workers of a step get rows of about one length and neither waits). Worker r
of W takes global batches r, r+W, ...; an optimizer step consumes W x grad_accum_steps of them. So
the data position is one number (global batches consumed this epoch), valid for any W on resume.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fizzbot.chat.render import trim_ids
from fizzbot.errors import InputError

IGNORE_INDEX = -100


@dataclass
class TokenizedRows:
    """Rows as one flat id array plus offsets: compact, picklable, and fast to slice."""

    ids: np.ndarray  # int32, all rows concatenated
    offsets: np.ndarray  # int64, len(rows) + 1
    n_context: np.ndarray  # int32, per row
    truncated: int = 0  # rows that lost context messages to max_seq_len

    def __len__(self) -> int:
        return len(self.n_context)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    @classmethod
    def concat(cls, parts: list["TokenizedRows"]) -> "TokenizedRows":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.int32))
        ids = np.concatenate([p.ids for p in parts])
        offsets = [np.zeros(1, np.int64)]
        base = 0
        for p in parts:
            offsets.append(p.offsets[1:] + base)
            base += p.offsets[-1]
        return cls(ids, np.concatenate(offsets), np.concatenate([p.n_context for p in parts]), sum(p.truncated for p in parts))

    def ordered_by_content(self) -> "TokenizedRows":
        """Rows in a canonical order (by a hash of their ids), whatever order they arrived in.

        Ray Data does not promise an order across blocks; the sampler must see the same rows in the
        same order on every worker and after every restart.
        """
        keys = np.array([zlib.crc32(self.row(i).tobytes()) for i in range(len(self))], dtype=np.uint64)
        keys = (keys << np.uint64(32)) | self.lengths().astype(np.uint64)
        order = np.argsort(keys, kind="stable")
        return self.select(order)

    def without_context(self, start_id: int) -> "TokenizedRows":
        """The same targets with their context removed: `start_id` then the target, for every row
        that has a context (a row without one stays as it is). The loss covers the same target
        tokens as before, so the two losses differ only by what the context told the model."""
        rows = []
        n_context = np.where(self.n_context > 0, 1, 0).astype(np.int32)
        for i in range(len(self)):
            target = self.row(i)[int(self.n_context[i]):]
            rows.append(np.concatenate([[start_id], target]) if self.n_context[i] > 0 else target)
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.concatenate(rows).astype(np.int32) if rows else np.zeros(0, np.int32)
        return TokenizedRows(ids, offsets, n_context, 0)

    def select(self, order: np.ndarray) -> "TokenizedRows":
        rows = [self.row(int(i)) for i in order]
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.concatenate(rows) if rows else np.zeros(0, np.int32)
        return TokenizedRows(ids.astype(np.int32), offsets, self.n_context[order].astype(np.int32), self.truncated)


class RowTokenizer:
    """Tokenises {context, target} rows; a callable class so Ray Data builds it once per worker."""

    def __init__(self, tokenizer, max_seq_len: int, speaker_ids: list[int]):
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.speaker_set = frozenset(int(i) for i in speaker_ids)
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []

    def __call__(self, contexts: list[str], targets: list[str], where: str = "rows") -> TokenizedRows:
        ctx_ids = self.tokenizer(list(contexts), add_special_tokens=False)["input_ids"]
        tgt_ids = self.tokenizer(list(targets), add_special_tokens=False)["input_ids"]
        rows, n_ctx, truncated = [], [], 0
        limit = self.max_seq_len
        head = len(self.bos)
        for number, (ctx, tgt) in enumerate(zip(ctx_ids, tgt_ids)):
            if not tgt or tgt[0] not in self.speaker_set:
                raise InputError("target does not start with a speaker token like <S0>", path=where, line=number + 1, field="target")
            if head + len(ctx) + len(tgt) > limit:
                # The same rule as the server's prompts (fizzbot.chat.render.trim_ids).
                tgt = tgt[: limit - head]
                ctx, _ = trim_ids(ctx, limit - head - len(tgt), self.speaker_set)
                truncated += 1
            rows.append(self.bos + ctx + tgt)
            n_ctx.append(head + len(ctx))
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter((i for r in rows for i in r), dtype=np.int32, count=int(offsets[-1]))
        return TokenizedRows(ids, offsets, np.array(n_ctx, dtype=np.int32), truncated)


def context_free_start(tokenizer) -> int:
    """What a target follows once its context is removed: BOS, as every training row begins (a
    tokenizer without one: EOS, the document boundary a pretrained model knows; else padding)."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("the tokenizer has no BOS, EOS or pad token to stand for a removed context")


def read_rows(path: str | Path) -> tuple[list[str], list[str]]:
    """Contexts and targets of a JSONL file, refusing rows without a target (file and line named)."""
    from fizzbot.artifacts.io import iter_jsonl

    contexts, targets = [], []
    for number, row in iter_jsonl(path):
        target = row.get("target")
        if not isinstance(target, str) or not target.strip():
            raise InputError("row has no target", path=str(path), line=number, field="target")
        context = row.get("context", "")
        if not isinstance(context, str):
            raise InputError("expected a string", path=str(path), line=number, field="context")
        contexts.append(context)
        targets.append(target)
    return contexts, targets


# --- batches -------------------------------------------------------------------------------------


# Neighbouring batches of a sorted pool that stay together when an epoch's batches are shuffled: worker
# r of W takes batches r, r+W, ..., so with two workers (the CPU default) each gets one of every pair,
# and the two do the same work at every step. Pairs, not longer runs: a step's batches still come from
# as many places in the length order as it has accumulation steps. A constant, so that the plan is the
# same for any W (resume).
STEP_GROUP = 2


@dataclass(frozen=True)
class BatchPlan:
    batch_size: int
    max_tokens: int | None
    bucket_multiplier: int
    bucketing: bool
    seed: int
    pack_length: int | None = None  # packing: whole rows in sequences of this many tokens


def plan_epoch(lengths: np.ndarray, plan: BatchPlan, epoch: int) -> list[np.ndarray]:
    """The epoch's batches (arrays of row indices), same on every worker for the same seed and epoch."""
    rng = np.random.default_rng([plan.seed, epoch])
    order = rng.permutation(len(lengths))
    if plan.pack_length is not None:
        return _pack(order, lengths, plan, rng)
    if not plan.bucketing:
        return _cut(order, lengths, plan)
    pool = plan.batch_size * plan.bucket_multiplier
    batches: list[np.ndarray] = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(_cut(chunk, lengths, plan))
    # Shuffle pairs of neighbouring batches (STEP_GROUP), not single batches, so that lengths do not come
    # in waves within the epoch and yet the workers of one step get batches of about one length: a
    # worker given short rows would otherwise wait at every gradient all-reduce for one given long rows.
    groups = [batches[i : i + STEP_GROUP] for i in range(0, len(batches), STEP_GROUP)]
    return [batch for g in rng.permutation(len(groups)) for batch in groups[g]]


def _cut(indices: np.ndarray, lengths: np.ndarray, plan: BatchPlan) -> list[np.ndarray]:
    if plan.max_tokens is None:
        return [indices[i : i + plan.batch_size] for i in range(0, len(indices), plan.batch_size)]
    batches, current, longest = [], [], 0
    for index in indices:
        size = int(lengths[index])
        if current and (len(current) >= plan.batch_size or max(longest, size) * (len(current) + 1) > plan.max_tokens):
            batches.append(np.array(current))
            current, longest = [], 0
        current.append(index)
        longest = max(longest, size)
    if current:
        batches.append(np.array(current))
    return batches


SEQUENCE_BREAK = -1  # in a packed batch's index array: the next rows start a new packed sequence


def _pack(order: np.ndarray, lengths: np.ndarray, plan: BatchPlan, rng: np.random.Generator) -> list[np.ndarray]:
    """Micro-batches of packed sequences, as index arrays with SEQUENCE_BREAK between sequences.

    Rows are taken in the epoch's order, in pools of about 16 micro-batches of tokens; each pool is
    packed best-fit decreasing (a row goes to the fullest sequence it still fits in), which leaves
    only a few tokens of each pack_length empty. The sequences are shuffled (seeded, like the rows)
    and grouped max_tokens // pack_length to a micro-batch.
    """
    import bisect

    per_batch = max(1, plan.max_tokens // plan.pack_length)
    pool_tokens = 16 * per_batch * plan.pack_length
    sequences: list[list[int]] = []
    start = 0
    while start < len(order):
        end, tokens = start, 0
        while end < len(order) and tokens < pool_tokens:
            tokens += int(lengths[order[end]])
            end += 1
        pool = order[start:end]
        pool = pool[np.argsort(-lengths[pool], kind="stable")]
        rooms: list[tuple[int, int]] = []  # (room left, sequence number), sorted
        packed: list[list[int]] = []
        for index in pool:
            size = int(lengths[index])
            at = bisect.bisect_left(rooms, (size, -1))
            if at < len(rooms):
                room, number = rooms.pop(at)
            else:
                room, number = plan.pack_length, len(packed)
                packed.append([])
            packed[number].append(int(index))
            bisect.insort(rooms, (room - size, number))
        sequences.extend(packed)
        start = end
    shuffled = [sequences[i] for i in rng.permutation(len(sequences))]
    batches = []
    for first in range(0, len(shuffled), per_batch):
        flat: list[int] = []
        for sequence in shuffled[first : first + per_batch]:
            if flat:
                flat.append(SEQUENCE_BREAK)
            flat.extend(sequence)
        batches.append(np.array(flat, dtype=np.int64))
    return batches


def sequences_of(indices: np.ndarray) -> list[np.ndarray]:
    """The packed sequences of a packed batch's index array (split at SEQUENCE_BREAK)."""
    parts = np.split(indices, np.flatnonzero(indices == SEQUENCE_BREAK))
    return [part[part != SEQUENCE_BREAK] for part in parts if np.any(part != SEQUENCE_BREAK)]


def rows_of(indices: np.ndarray) -> np.ndarray:
    """The row indices of a batch (packed or not), without sequence breaks."""
    return indices[indices != SEQUENCE_BREAK]


def plan_evaluation(lengths: np.ndarray, batch_size: int, max_tokens: int | None, max_batches: int | None,
                    seed: int, world: int) -> list[np.ndarray]:
    """The validation batches, the same at every evaluation (so checkpoints compare on the same rows).

    Without a cap, every row. With `max_batches` (per worker), a seeded sample that spans all lengths:
    rows sorted by length are cut into as many equal strata as rows fit, and one row is drawn from each,
    so the shortest and the longest rows are represented as often as they occur. The sample is the
    largest one whose batches (batch_size rows and max_tokens tokens each, rows of similar length
    together) number at most max_batches x world; a split that fits whole is taken whole.
    Global batch i goes to worker i mod world.
    """
    n = len(lengths)
    by_length = np.argsort(lengths, kind="stable")
    budget = None if max_batches is None else max_batches * world
    plan = BatchPlan(batch_size, max_tokens, 1, True, seed)

    def batches_of(rows: np.ndarray) -> list[np.ndarray]:
        return _cut(rows[np.argsort(lengths[rows], kind="stable")], lengths, plan)

    if budget is None or len(batches_of(by_length)) <= budget:
        return batches_of(by_length)
    rng = np.random.default_rng([seed, 0xE7A1])
    draws = rng.random(n)  # one uniform draw per stratum position, fixed for the seed

    def sample(k: int) -> np.ndarray:
        edges = np.linspace(0, n, k + 1)
        picks = np.minimum((edges[:-1] + draws[:k] * (edges[1:] - edges[:-1])).astype(np.int64), n - 1)
        return by_length[picks]

    low, high = 1, n  # the largest k whose sample fits the budget (batches grow with k)
    while low < high:
        middle = (low + high + 1) // 2
        if len(batches_of(sample(middle))) <= budget:
            low = middle
        else:
            high = middle - 1
    return batches_of(sample(low))


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None  # None for packed batches: position_ids delimit the rows
    labels: torch.Tensor
    real_tokens: int  # non-padding ids
    target_tokens: int  # ids the loss covers
    padded_tokens: int  # rows x longest (packed: sequences x pack_length)
    position_ids: torch.Tensor | None = None  # packed batches: positions restart at 0 in every row


def _first_label(n_context: int, train_on_context: bool) -> int:
    """Where a row's labels start: its target (after `n_context` ids), or with `train_on_context` every
    message after the first id (BOS, or a first speaker token nothing before it predicts)."""
    return 1 if train_on_context else max(n_context, 1)


def collate(rows: TokenizedRows, indices: np.ndarray, pad_id: int, multiple_of: int = 1, train_on_context: bool = False) -> Batch:
    """Right-padded tensors; labels are -100 on the context (unless `train_on_context`), on padding,
    and the shift is left to the loss."""
    seqs = [rows.row(int(i)) for i in indices]
    longest = max(len(s) for s in seqs)
    if multiple_of > 1:
        longest = -(-longest // multiple_of) * multiple_of
    input_ids = np.full((len(seqs), longest), pad_id, dtype=np.int64)
    labels = np.full((len(seqs), longest), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(seqs), longest), dtype=np.int64)
    target_tokens = 0
    for r, (seq, i) in enumerate(zip(seqs, indices)):
        n = len(seq)
        c = int(rows.n_context[int(i)])
        input_ids[r, :n] = seq
        mask[r, :n] = 1
        start = _first_label(c, train_on_context)  # position 0 has nothing before it to predict it from
        labels[r, start:n] = seq[start:]
        target_tokens += n - start
    real = int(mask.sum())
    return Batch(
        torch.from_numpy(input_ids),
        torch.from_numpy(mask),
        torch.from_numpy(labels),
        real,
        target_tokens,
        len(seqs) * longest,
    )


def collate_packed(rows: TokenizedRows, indices: np.ndarray, pad_id: int, pack_length: int, train_on_context: bool = False) -> Batch:
    """Packed sequences of pack_length tokens, rows end to end (`_pack` decided which row goes where).

    Each row's positions restart at 0, which is how transformers tells packed rows apart (attention
    stays inside a row: a block-diagonal causal mask with sdpa, skipped blocks with flex attention).
    The label of each row's first token is masked, as in a padded batch (nothing before it in the row
    predicts it); a sequence's tail is padding, a row of its own that the loss ignores.
    """
    packs = sequences_of(np.asarray(indices))
    input_ids = np.full((len(packs), pack_length), pad_id, dtype=np.int64)
    labels = np.full((len(packs), pack_length), IGNORE_INDEX, dtype=np.int64)
    positions = np.zeros((len(packs), pack_length), dtype=np.int64)
    real = target_tokens = 0
    for r, members in enumerate(packs):
        at = 0
        for i in members:
            seq = rows.row(int(i))
            n, c = len(seq), int(rows.n_context[int(i)])
            if at + n > pack_length:
                raise ValueError(f"packed rows exceed training.pack_length ({pack_length})")
            input_ids[r, at : at + n] = seq
            positions[r, at : at + n] = np.arange(n)
            start = _first_label(c, train_on_context)
            labels[r, at + start : at + n] = seq[start:]
            target_tokens += n - start
            real += n
            at += n
        positions[r, at:] = np.arange(pack_length - at)
    return Batch(
        torch.from_numpy(input_ids),
        None,
        torch.from_numpy(labels),
        real,
        target_tokens,
        len(packs) * pack_length,
        torch.from_numpy(positions),
    )
