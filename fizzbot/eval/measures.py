"""Whether a model learned its channel: the measures and the baselines they are read against.

Pure functions over numpy arrays (no stage imported), shared by training's evaluation
(`fizzbot/train/loop.py`, every `eval_steps`) and by `fizzbot eval` (`fizzbot/eval/run.py`):

- **who speaks next**: accuracy over every speaker token, and accuracy and macro-F1 over the *named*
  speakers (rows whose true speaker has a token of their own; the prediction is the model's best
  named speaker), the shared long-tail token reported apart (its share of the targets, the model's
  recall and precision on it). Baselines on the same rows: the majority named speaker of the
  training targets, and turn-taking: a bigram over speakers (the previous message's speaker -> the
  next one), fitted on the training rows;
- **context gain**: the loss of the same targets with the context removed, minus the loss with it.
  A model that does not use the conversation gains nothing;
- **the target loss against unigram and bigram token models** fitted on the training targets and
  scored on the same target tokens;
- **style**: a character n-gram classifier of "who wrote this", trained on real training messages;
  its accuracy on generated messages against the same on real held-out ones; message length and
  vocabulary figures.

Tokenised rows are read through the shape of `fizzbot.train.data.TokenizedRows`: `ids` (all rows
concatenated), `offsets` (len + 1) and `n_context` (leading ids of each row that are not target).
The target tokens a loss covers are `ids[max(n_context, 1):]` of each row, as in training.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fizzbot.chat.speakers import SpeakerMap

NO_SPEAKER = -1  # column of "no previous speaker" (the conversation's first message) and of non-speaker ids


# --- speakers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeakerColumns:
    """Speaker tokens as columns 0..S-1 (the speaker map's order), which are named and which is the long tail."""

    token_ids: np.ndarray  # token id of each column
    tokens: tuple[str, ...]  # <S0>, <S1>, ...
    names: tuple[str, ...]  # username of each column (OTHERS_NAME for the shared token)
    other: int | None  # column of the shared long-tail token, None where every author has a token

    @classmethod
    def of(cls, speaker_map: SpeakerMap, token_ids: Sequence[int]) -> "SpeakerColumns":
        """`token_ids`: the tokenizer's ids of `speaker_map.tokens`, in that order."""
        if len(token_ids) != len(speaker_map.tokens):
            raise ValueError(f"{len(token_ids)} token ids for {len(speaker_map.tokens)} speaker tokens")
        names = speaker_map.token_to_username()
        other = speaker_map.tokens.index(speaker_map.other_token) if speaker_map.other_token else None
        tokens = tuple(speaker_map.tokens)
        return cls(np.asarray(token_ids, dtype=np.int64), tokens, tuple(names[t] for t in tokens), other)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def named(self) -> np.ndarray:
        return np.array([c for c in range(len(self)) if c != self.other], dtype=np.int64)

    def column_of(self, ids: np.ndarray) -> np.ndarray:
        """Column of each token id; NO_SPEAKER for ids that are not speaker tokens."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(self.token_ids)
        where = np.searchsorted(self.token_ids[order], ids).clip(0, len(self) - 1)
        found = self.token_ids[order][where] == ids
        return np.where(found, order[where], NO_SPEAKER)


def row_speakers(rows, columns: SpeakerColumns) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the target's speaker column, the previous message's speaker column (NO_SPEAKER for
    a conversation opener), and the number of context messages (speaker tokens in the context)."""
    ids = np.asarray(rows.ids)
    starts = np.asarray(rows.offsets[:-1], dtype=np.int64)
    n_context = np.asarray(rows.n_context, dtype=np.int64)
    if len(starts) == 0:
        return (np.zeros(0, np.int64),) * 3
    # A target at position 0 (no BOS, no context) is never predicted: it has no speaker to score.
    speaker = np.where(n_context > 0, columns.column_of(ids[np.minimum(starts + n_context, len(ids) - 1)]), NO_SPEAKER)
    lookup = np.zeros(max(int(ids.max(initial=0)), int(columns.token_ids.max(initial=0))) + 1, dtype=bool)
    lookup[columns.token_ids] = True
    where = np.flatnonzero(lookup[ids])  # positions of every speaker token, in order
    context_end = starts + n_context
    first, after = np.searchsorted(where, starts), np.searchsorted(where, context_end)
    messages = after - first
    newest = where[np.maximum(after - 1, 0)] if len(where) else np.zeros(len(starts), np.int64)
    previous = np.where(messages > 0, columns.column_of(ids[newest]), NO_SPEAKER)
    return speaker.astype(np.int64), previous.astype(np.int64), messages.astype(np.int64)


@dataclass
class SpeakerBaselines:
    """Who speaks next, without a model: the majority speaker, and a bigram over speakers (turn-taking)."""

    majority: int  # column of the most frequent training target
    majority_named: int  # the most frequent named speaker
    bigram: np.ndarray  # [S + 1, S] counts: previous speaker (row 0: none) -> next speaker

    @classmethod
    def fit(cls, speakers: np.ndarray, previous: np.ndarray, columns: SpeakerColumns) -> "SpeakerBaselines":
        ok = speakers >= 0
        s = len(columns)
        counts = np.bincount(speakers[ok], minlength=s)
        named = columns.named
        majority_named = int(named[np.argmax(counts[named])]) if len(named) else int(np.argmax(counts))
        bigram = np.zeros((s + 1, s), dtype=np.int64)
        np.add.at(bigram, (previous[ok] + 1, speakers[ok]), 1)
        return cls(int(np.argmax(counts)), majority_named, bigram)

    def predict_bigram(self, previous: np.ndarray, named: np.ndarray | None = None) -> np.ndarray:
        """The most frequent next speaker after each previous one (among `named` columns when given);
        a previous speaker never seen in training falls back to the majority."""
        table = self.bigram if named is None else self.bigram[:, named]
        best = table.argmax(axis=1)
        if named is not None:
            best = named[best]
        fallback = self.majority if named is None else self.majority_named
        best = np.where(table.sum(axis=1) > 0, best, fallback)
        return best[np.asarray(previous) + 1]


# --- token baselines -------------------------------------------------------------------------------


def target_positions(rows) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions (into `rows.ids`) of every target token a loss covers, and the row of each."""
    starts = np.asarray(rows.offsets[:-1], dtype=np.int64)
    ends = np.asarray(rows.offsets[1:], dtype=np.int64)
    first = starts + np.maximum(np.asarray(rows.n_context, dtype=np.int64), 1)
    counts = np.maximum(ends - first, 0)
    row = np.repeat(np.arange(len(starts)), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return first[row] + within, row


@dataclass
class TokenBaselines:
    """Unigram (add-one) and bigram (Witten-Bell interpolated with the unigram) models of target tokens.

    Witten-Bell needs no tuned constant: after a token `v` seen c(v) times with T(v) distinct
    followers, P(w | v) = (c(v, w) + T(v) P(w)) / (c(v) + T(v)); an unseen `v` gives P(w).
    """

    unigram_logp: np.ndarray  # [vocab]
    pair_codes: np.ndarray  # sorted v * vocab + w of every seen pair
    pair_counts: np.ndarray
    previous_total: np.ndarray  # [vocab] c(v)
    previous_types: np.ndarray  # [vocab] T(v)

    @classmethod
    def fit(cls, rows, vocab: int) -> "TokenBaselines":
        positions, _ = target_positions(rows)
        # Index before widening: the rows' ids can be tens of millions.
        targets, before = rows.ids[positions].astype(np.int64), rows.ids[positions - 1].astype(np.int64)
        freq = np.bincount(targets, minlength=vocab).astype(np.float64) + 1.0
        codes, counts = np.unique(before * vocab + targets, return_counts=True)
        previous = codes // vocab
        total = np.bincount(previous, weights=counts, minlength=vocab)
        types = np.bincount(previous, minlength=vocab).astype(np.float64)
        return cls(np.log(freq / freq.sum()), codes, counts.astype(np.float64), total, types)

    @property
    def vocab(self) -> int:
        return len(self.unigram_logp)

    def row_losses(self, rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: summed unigram loss, summed bigram loss (nats), and target tokens."""
        n = len(rows.n_context)
        positions, row = target_positions(rows)
        targets, before = rows.ids[positions].astype(np.int64), rows.ids[positions - 1].astype(np.int64)
        p_unigram = np.exp(self.unigram_logp[targets])
        codes = before * self.vocab + targets
        pair = np.zeros(len(codes))
        if len(self.pair_codes):
            where = np.searchsorted(self.pair_codes, codes).clip(0, len(self.pair_codes) - 1)
            pair = np.where(self.pair_codes[where] == codes, self.pair_counts[where], 0.0)
        total, types = self.previous_total[before], self.previous_types[before]
        p_bigram = np.where(total > 0, (pair + types * p_unigram) / np.maximum(total + types, 1.0), p_unigram)
        return (
            np.bincount(row, weights=-np.log(p_unigram), minlength=n),
            np.bincount(row, weights=-np.log(p_bigram), minlength=n),
            np.bincount(row, minlength=n).astype(np.float64),
        )


# --- what evaluation compares against, and the running sums -----------------------------------------


@dataclass
class References:
    """Everything an evaluation compares the model with, per validation row, computed once."""

    columns: SpeakerColumns
    speaker: np.ndarray  # true speaker column of each validation row
    previous: np.ndarray  # previous message's speaker column
    context_messages: np.ndarray
    predictions: dict[str, np.ndarray]  # baseline name -> predicted column per row
    unigram: np.ndarray  # summed unigram loss per row
    bigram: np.ndarray  # summed bigram loss per row
    baseline_tokens: np.ndarray
    speaker_baselines: SpeakerBaselines
    token_baselines: TokenBaselines
    # Share of training rows with an empty context. Where it is 0 the model never learned to predict
    # a target after BOS alone: the loss "with the context removed" is then measured where the model
    # was never trained, and the context gain overstates what the context gives.
    train_empty_context_share: float | None = None

    @classmethod
    def build(cls, train_rows, val_rows, columns: SpeakerColumns, vocab: int) -> "References":
        train_speaker, train_previous, train_messages = row_speakers(train_rows, columns)
        speakers = SpeakerBaselines.fit(train_speaker, train_previous, columns)
        tokens = TokenBaselines.fit(train_rows, vocab)
        refs = cls.against(val_rows, columns, speakers, tokens)
        refs.train_empty_context_share = float(np.mean(train_messages == 0)) if len(train_messages) else None
        return refs

    @classmethod
    def against(cls, val_rows, columns: SpeakerColumns, speakers: SpeakerBaselines, tokens: TokenBaselines) -> "References":
        speaker, previous, messages = row_speakers(val_rows, columns)
        n = len(speaker)
        predictions = {
            "majority": np.full(n, speakers.majority, dtype=np.int64),
            "bigram": speakers.predict_bigram(previous),
            "majority_named": np.full(n, speakers.majority_named, dtype=np.int64),
            "bigram_named": speakers.predict_bigram(previous, columns.named),
        }
        unigram, bigram, counted = tokens.row_losses(val_rows)
        return cls(columns, speaker, previous, messages, predictions, unigram, bigram, counted, speakers, tokens)

    def start_figures(self) -> dict:
        """What a run logs once at its start: the shape of the speaker problem."""
        s = self.speaker[self.speaker >= 0]
        other = self.columns.other
        return {
            "speaker_tokens": len(self.columns),
            "val_others_share": float(np.mean(s == other)) if other is not None and len(s) else 0.0,
            "majority_named_speaker": self.columns.names[self.speaker_baselines.majority_named],
            "train_empty_context_share": self.train_empty_context_share,
        }


# Confusion matrices kept by a tally: the model over every speaker, the model among named speakers,
# and each baseline. Rows: the true speaker; columns: the predicted one.
CONFUSIONS = ("model", "model_named", "majority", "bigram", "majority_named", "bigram_named")
SUMS = ("loss", "tokens", "bare_loss", "bare_tokens", "unigram", "bigram", "baseline_tokens", "rows")


@dataclass
class Tally:
    """Running sums of an evaluation over any subset of the validation rows; adds across workers
    as one vector (`vector` / `from_vector`), so every figure is exact over all of them."""

    speakers: int
    sums: dict[str, float] = field(default_factory=dict)
    confusion: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in SUMS:
            self.sums.setdefault(name, 0.0)
        for name in CONFUSIONS:
            self.confusion.setdefault(name, np.zeros((self.speakers, self.speakers), dtype=np.float64))

    def add(self, rows: np.ndarray, refs: References, loss: np.ndarray, tokens: np.ndarray,
            bare_loss: np.ndarray, bare_tokens: np.ndarray, speaker_logits: np.ndarray) -> None:
        """Rows `rows` (indices into the validation rows) scored by the model: per-row summed loss and
        target tokens with their context and without it, and logits over the speaker columns at
        each row's first target position."""
        rows = np.asarray(rows, dtype=np.int64)
        s = self.sums
        s["loss"] += float(np.sum(loss))
        s["tokens"] += float(np.sum(tokens))
        s["bare_loss"] += float(np.sum(bare_loss))
        s["bare_tokens"] += float(np.sum(bare_tokens))
        s["unigram"] += float(refs.unigram[rows].sum())
        s["bigram"] += float(refs.bigram[rows].sum())
        s["baseline_tokens"] += float(refs.baseline_tokens[rows].sum())
        s["rows"] += len(rows)
        truth = refs.speaker[rows]
        ok = truth >= 0
        logits = np.asarray(speaker_logits, dtype=np.float64)
        named = refs.columns.named
        predicted = {
            "model": logits.argmax(axis=1) if len(rows) else np.zeros(0, np.int64),
            "model_named": named[logits[:, named].argmax(axis=1)] if len(rows) and len(named) else np.zeros(len(rows), np.int64),
            **{name: p[rows] for name, p in refs.predictions.items()},
        }
        for name in CONFUSIONS:
            np.add.at(self.confusion[name], (truth[ok], predicted[name][ok]), 1)

    def vector(self) -> list[float]:
        return [self.sums[k] for k in SUMS] + [x for name in CONFUSIONS for x in self.confusion[name].ravel().tolist()]

    @classmethod
    def from_vector(cls, speakers: int, values: Sequence[float]) -> "Tally":
        values = np.asarray(values, dtype=np.float64)
        sums = {k: float(values[i]) for i, k in enumerate(SUMS)}
        rest = values[len(SUMS):].reshape(len(CONFUSIONS), speakers, speakers)
        return cls(speakers, sums, {name: rest[i].copy() for i, name in enumerate(CONFUSIONS)})

    def figures(self, columns: SpeakerColumns) -> dict:
        """Every figure of the evaluation, flat (what metrics.jsonl and TensorBoard get)."""
        s = self.sums
        val_loss = _ratio(s["loss"], s["tokens"])
        no_context = _ratio(s["bare_loss"], s["bare_tokens"])
        bigram = _ratio(s["bigram"], s["baseline_tokens"])
        named = columns.named
        model = self.confusion["model"]
        figures = {
            "val_loss": val_loss,
            "val_ppl": math.exp(min(val_loss, 50)) if val_loss is not None else None,
            "no_context_loss": no_context,
            "context_gain": None if val_loss is None or no_context is None else no_context - val_loss,
            "unigram_loss": _ratio(s["unigram"], s["baseline_tokens"]),
            "bigram_loss": bigram,
            "loss_vs_bigram": None if val_loss is None or not bigram else val_loss / bigram,
            "rows": int(s["rows"]),
            "target_tokens": int(s["tokens"]),
            "speaker_acc": accuracy(model),
            "majority_acc": accuracy(self.confusion["majority"]),
            "bigram_speaker_acc": accuracy(self.confusion["bigram"]),
            "named_rows": int(model[named].sum()) if len(named) else 0,
        }
        for name, key in (("model_named", "named_speaker"), ("majority_named", "named_majority"), ("bigram_named", "named_bigram")):
            sub = self.confusion[name][np.ix_(named, named)] if len(named) else np.zeros((0, 0))
            figures[f"{key}_acc"] = accuracy(sub)
            figures[f"{key}_macro_f1"] = macro_f1(sub)
        best = max((figures[k] for k in ("named_majority_acc", "named_bigram_acc") if figures[k] is not None), default=None)
        acc = figures["named_speaker_acc"]
        figures["named_acc_vs_best_baseline"] = acc / best if acc is not None and best else None
        other = columns.other
        total = model.sum()
        if other is not None and total:
            figures["others_share"] = float(model[other].sum() / total)
            figures["others_recall"] = _ratio(model[other, other], model[other].sum())
            figures["others_precision"] = _ratio(model[other, other], model[:, other].sum())
        else:
            figures.update(others_share=0.0, others_recall=None, others_precision=None)
        return figures


def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


def accuracy(confusion: np.ndarray) -> float | None:
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else None


def macro_f1(confusion: np.ndarray) -> float | None:
    """Mean F1 over the classes that occur in the truth or the predictions (rows: truth)."""
    tp = np.diag(confusion)
    truth, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    present = (truth + predicted) > 0
    if not present.any():
        return None
    f1 = 2 * tp[present] / (truth[present] + predicted[present])
    return float(f1.mean())


def per_speaker_f1(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, F1) per class; 0 where undefined."""
    tp = np.diag(confusion)
    truth, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp, dtype=np.float64), where=predicted > 0)
    recall = np.divide(tp, truth, out=np.zeros_like(tp, dtype=np.float64), where=truth > 0)
    denominator = truth + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp, dtype=np.float64), where=denominator > 0)
    return precision, recall, f1


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_line(figures: dict) -> str:
    """The figures of an evaluation on one line, each beside its baseline."""
    f = figures
    best = max((v for v in (f.get("named_majority_acc"), f.get("named_bigram_acc")) if v is not None), default=None)
    return (
        f"val_loss {_fmt(f['val_loss'])} (bigram {_fmt(f.get('bigram_loss'))}, unigram {_fmt(f.get('unigram_loss'))}), "
        f"context gain {_fmt(f.get('context_gain'))}; named-speaker acc {_fmt(f.get('named_speaker_acc'))} "
        f"(best baseline {_fmt(best)}), macro-F1 {_fmt(f.get('named_speaker_macro_f1'))}; "
        f"all speakers {_fmt(f.get('speaker_acc'))} (majority {_fmt(f.get('majority_acc'))})"
    )


# --- style -----------------------------------------------------------------------------------------


class StyleClassifier:
    """Who wrote this? Multinomial naive Bayes over character n-grams (orders 1-4, case kept, the
    message's start and end marked), hashed into a fixed number of buckets. Flat prior: it answers
    whose *style* a text has, not who writes most. Vectorised: all texts are one code-point array."""

    def __init__(self, orders: Sequence[int] = (1, 2, 3, 4), buckets: int = 1 << 17, alpha: float = 0.1):
        self.orders = tuple(orders)
        self.buckets = buckets
        self.alpha = alpha
        self.log_probs: np.ndarray | None = None  # [classes, buckets]

    def _ngrams(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(bucket, text index) of every n-gram of every text."""
        pieces = ["\x02" + t + "\x03" for t in texts]
        if not pieces:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        points = np.frombuffer("".join(pieces).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        owner = np.repeat(np.arange(len(pieces)), [len(p) for p in pieces])
        buckets, owners = [], []
        for n in self.orders:
            width = len(points) - n + 1
            if width <= 0:
                continue
            code = np.full(width, np.uint64(n))
            for k in range(n):
                code = code * np.uint64(0x100000001B3) + points[k : k + width]  # wraps mod 2^64
            code ^= code >> np.uint64(33)
            code *= np.uint64(0xFF51AFD7ED558CCD)
            code ^= code >> np.uint64(33)
            same = owner[:width] == owner[n - 1 :]
            buckets.append((code % np.uint64(self.buckets)).astype(np.int64)[same])
            owners.append(owner[:width][same])
        return np.concatenate(buckets), np.concatenate(owners)

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> "StyleClassifier":
        labels = np.asarray(labels, dtype=np.int64)
        classes = int(labels.max()) + 1 if len(labels) else 0
        bucket, owner = self._ngrams(texts)
        counts = np.bincount(labels[owner] * self.buckets + bucket, minlength=classes * self.buckets)
        counts = counts.reshape(classes, self.buckets).astype(np.float64) + self.alpha
        self.log_probs = (np.log(counts) - np.log(counts.sum(axis=1, keepdims=True))).astype(np.float32)
        return self

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """[texts, classes] log-likelihoods (up to a constant per text)."""
        if self.log_probs is None:
            raise RuntimeError("StyleClassifier.fit first")
        bucket, owner = self._ngrams(texts)
        out = np.zeros((len(texts), self.log_probs.shape[0]))
        for c in range(self.log_probs.shape[0]):
            out[:, c] = np.bincount(owner, weights=self.log_probs[c, bucket], minlength=len(texts))
        return out

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return self.scores(texts).argmax(axis=1) if len(texts) else np.zeros(0, np.int64)


_WORD_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def message_stats(texts: Sequence[str], known_words: set[str] | None = None) -> dict:
    """Length and vocabulary of a set of messages: mean characters and words, distinct words per
    word (over all the texts together; compare sets of equal size), and, given a speaker's training
    vocabulary, the share of words in it."""
    tokens = [words(t) for t in texts]
    flat = [w for ts in tokens for w in ts]
    stats = {
        "messages": len(texts),
        "mean_chars": float(np.mean([len(t) for t in texts])) if texts else None,
        "mean_words": float(np.mean([len(ts) for ts in tokens])) if texts else None,
        "distinct_word_share": len(set(flat)) / len(flat) if flat else None,
    }
    if known_words is not None:
        stats["known_word_share"] = sum(w in known_words for w in flat) / len(flat) if flat else None
    return stats


def style_figures(classifier: StyleClassifier, speakers: Sequence[int], real: Sequence[str], generated: Sequence[str]) -> dict:
    """Attribution accuracy of real held-out and of generated messages, paired (same speakers, same
    contexts); `speakers` are class indices of the classifier."""
    speakers = np.asarray(speakers, dtype=np.int64)
    real_hits = classifier.predict(real) == speakers if len(real) else np.zeros(0, bool)
    generated_hits = classifier.predict(generated) == speakers if len(generated) else np.zeros(0, bool)
    real_acc = float(real_hits.mean()) if len(real_hits) else None
    generated_acc = float(generated_hits.mean()) if len(generated_hits) else None
    return {
        "real_acc": real_acc,
        "generated_acc": generated_acc,
        "generated_vs_real": generated_acc / real_acc if real_acc and generated_acc is not None else None,
        "chance": 1.0 / classifier.log_probs.shape[0] if classifier.log_probs is not None and classifier.log_probs.shape[0] else None,
        "real_hits": real_hits.tolist(),
        "generated_hits": generated_hits.tolist(),
    }
