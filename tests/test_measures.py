"""The measures of fizzbot.eval.measures, on rows small enough to work out by hand: who speaks next
(named speakers, the long tail apart, both baselines), macro-F1, the token baselines, the sums that
add across workers, and the style classifier on real demo messages."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from fizzbot.chat.render import split_messages
from fizzbot.chat.speakers import OTHERS_NAME, Speaker, SpeakerMap
from fizzbot.eval import measures
from fizzbot.eval.measures import (
    NO_SPEAKER, References, SpeakerBaselines, SpeakerColumns, StyleClassifier, Tally, TokenBaselines, macro_f1,
    message_stats, row_speakers,
)

BOS, EOT, NL = 1, 2, 3
S0, S1, S2, OTHERS = 10, 11, 12, 13  # speaker token ids; OTHERS is the shared long-tail token


@dataclass
class Rows:
    """The TokenizedRows shape: ids, offsets, n_context."""

    ids: np.ndarray
    offsets: np.ndarray
    n_context: np.ndarray


def rows_of(*rows: tuple[list[int], list[int]]) -> Rows:
    """(context ids, target ids) per row, BOS first, as RowTokenizer lays them out."""
    seqs = [[BOS] + ctx + tgt for ctx, tgt in rows]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    return Rows(np.array([i for s in seqs for i in s], dtype=np.int32), offsets, np.array([1 + len(c) for c, _ in rows], dtype=np.int32))


def message(speaker: int, *words: int) -> list[int]:
    return [speaker, *words, EOT, NL]


def target(speaker: int, *words: int) -> list[int]:
    return [speaker, *words, EOT]


@pytest.fixture
def columns() -> SpeakerColumns:
    smap = SpeakerMap([Speaker("<S0>", "ann"), Speaker("<S1>", "bob"), Speaker("<S2>", "cy")], other_token="<S3>", other_authors=40)
    return SpeakerColumns.of(smap, [S0, S1, S2, OTHERS])


def test_columns_name_the_long_tail_and_map_token_ids(columns):
    assert columns.names == ("ann", "bob", "cy", OTHERS_NAME)
    assert columns.other == 3 and columns.named.tolist() == [0, 1, 2]
    assert columns.column_of(np.array([S2, 5, OTHERS, S0])).tolist() == [2, NO_SPEAKER, 3, 0]
    without_tail = SpeakerColumns.of(SpeakerMap([Speaker("<S0>", "ann"), Speaker("<S1>", "bob")]), [S0, S1])
    assert without_tail.other is None and without_tail.named.tolist() == [0, 1]


def test_row_speakers_reads_the_target_the_previous_speaker_and_the_context_length(columns):
    rows = rows_of(
        (message(S0, 5) + message(S1, 6, 7), target(OTHERS, 8)),  # previous: bob; 2 messages
        ([], target(S2, 9)),  # an opener: no previous speaker
        (message(S2, 5), target(S0, 5)),
    )
    speaker, previous, messages = row_speakers(rows, columns)
    assert speaker.tolist() == [3, 2, 0]
    assert previous.tolist() == [1, NO_SPEAKER, 2]
    assert messages.tolist() == [2, 0, 1]


def test_speaker_baselines_majority_named_and_turn_taking(columns):
    # Training: ann is followed by bob, bob by ann; the long tail is the most frequent speaker overall.
    speakers = np.array([1, 0, 1, 0, 3, 3, 3, 3, 3, 1])
    previous = np.array([0, 1, 0, 1, 3, 3, 3, 3, NO_SPEAKER, 0])
    base = SpeakerBaselines.fit(speakers, previous, columns)
    assert base.majority == 3 and base.majority_named == 1  # bob: 3 times, ann twice
    assert base.predict_bigram(np.array([0, 1, 3, NO_SPEAKER])).tolist() == [1, 0, 3, 3]
    # Among named speakers only: after the long tail nobody named followed, so the majority named speaker.
    assert base.predict_bigram(np.array([0, 1, 3, 2]), columns.named).tolist() == [1, 0, 1, 1]


def test_macro_f1_by_hand():
    confusion = np.array([[2, 1], [0, 1]])  # truth in rows
    # class 0: tp 2, fp 0, fn 1 -> 0.8; class 1: tp 1, fp 1, fn 0 -> 2/3
    assert macro_f1(confusion) == pytest.approx((0.8 + 2 / 3) / 2)
    # A class that neither occurs nor is predicted does not count.
    assert macro_f1(np.pad(confusion, (0, 1))) == pytest.approx((0.8 + 2 / 3) / 2)
    assert macro_f1(np.zeros((2, 2))) is None


def test_witten_bell_bigram_is_a_distribution_and_matches_its_formula():
    vocab = 6
    train = rows_of(([], [4, 5, 4, 5, 4, 0]))  # pairs after BOS: (1,4) (4,5) (5,4) (4,5) (5,4) (4,0)
    base = TokenBaselines.fit(train, vocab)
    # P(w | v=4) over every w sums to 1: score one row per w, each "v w".
    probe = Rows(np.array([x for w in range(vocab) for x in (4, w)], dtype=np.int32), np.arange(0, 2 * vocab + 1, 2), np.ones(vocab, dtype=np.int32))
    _, bigram, tokens = base.row_losses(probe)
    assert tokens.tolist() == [1.0] * vocab
    assert np.exp(-bigram).sum() == pytest.approx(1.0)
    # After 4: c(4)=3, T(4)=2 (5 twice, 0 once); unigram add-one over 6 targets + 6 = 12.
    unigram = {w: (c + 1) / 12 for w, c in {0: 1, 1: 0, 2: 0, 3: 0, 4: 3, 5: 2}.items()}
    assert math.exp(-bigram[5]) == pytest.approx((2 + 2 * unigram[5]) / (3 + 2))
    assert math.exp(-bigram[1]) == pytest.approx((0 + 2 * unigram[1]) / (3 + 2))
    uni, _, _ = base.row_losses(probe)
    assert np.exp(-uni).sum() == pytest.approx(1.0)


def test_tally_figures_by_hand(columns):
    # Four validation rows: true speakers bob, ann, the long tail, bob; previous speakers ann, bob, -, ann.
    val = rows_of(
        (message(S0, 5), target(S1, 6)),
        (message(S1, 5), target(S0, 6)),
        ([], target(OTHERS, 7)),
        (message(S0, 5), target(S1, 8)),
    )
    train = rows_of((message(S0, 5), target(S1, 6)), (message(S1, 5), target(S0, 6)), (message(S0, 5), target(S1, 6)))
    refs = References.build(train, val, columns, vocab=16)
    assert refs.previous.tolist() == [0, 1, NO_SPEAKER, 0]
    assert refs.predictions["bigram_named"].tolist() == [1, 0, 1, 1]
    assert refs.train_empty_context_share == 0.0
    # The model: the long tail is its top guess for rows 0 and 2; among named speakers it says bob, bob, cy, bob.
    logits = np.array([
        [0.0, 2.0, 0.0, 5.0],
        [0.0, 2.0, 0.0, 1.0],
        [0.0, 0.0, 1.0, 9.0],
        [0.0, 3.0, 0.0, 1.0],
    ])
    tally = Tally(len(columns))
    tally.add(np.arange(4), refs, loss=np.array([2.0, 2.0, 4.0, 2.0]), tokens=np.array([2, 2, 2, 2]),
              bare_loss=np.array([3.0, 3.0, 4.0, 3.0]), bare_tokens=np.array([2, 2, 2, 2]), speaker_logits=logits)
    f = tally.figures(columns)
    assert f["val_loss"] == pytest.approx(10 / 8) and f["no_context_loss"] == pytest.approx(13 / 8)
    assert f["context_gain"] == pytest.approx(3 / 8)
    assert f["speaker_acc"] == pytest.approx(2 / 4)  # rows 2 (long tail) and 3
    assert f["named_rows"] == 3
    assert f["named_speaker_acc"] == pytest.approx(2 / 3)  # rows 0 and 3 among the named rows
    assert f["named_majority_acc"] == pytest.approx(2 / 3)  # bob, the majority named speaker of training
    assert f["named_bigram_acc"] == pytest.approx(1.0)
    assert f["named_acc_vs_best_baseline"] == pytest.approx(2 / 3)
    assert f["others_share"] == pytest.approx(1 / 4)
    assert f["others_recall"] == pytest.approx(1.0) and f["others_precision"] == pytest.approx(1 / 2)
    # Named confusion: truth bob -> bob twice; ann -> bob once. ann F1 0; bob: tp 2, fp 1 -> 0.8.
    assert f["named_speaker_macro_f1"] == pytest.approx(0.8 / 2)


def test_tallies_of_worker_shares_add_up_to_the_whole(columns):
    rng = np.random.default_rng(0)
    val = rows_of(*[(message(int(rng.choice([S0, S1, S2]))), target(int(rng.choice([S0, S1, S2, OTHERS])), 5)) for _ in range(30)])
    refs = References.build(val, val, columns, vocab=16)
    loss, tokens, bare = rng.random(30), np.full(30, 3), rng.random(30) + 1
    logits = rng.normal(size=(30, 4))
    whole = Tally(4)
    whole.add(np.arange(30), refs, loss, tokens, bare, tokens, logits)
    parts = []
    for rank in range(2):
        mine = np.arange(rank, 30, 2)
        t = Tally(4)
        t.add(mine, refs, loss[mine], tokens[mine], bare[mine], tokens[mine], logits[mine])
        parts.append(np.array(t.vector()))
    summed = Tally.from_vector(4, parts[0] + parts[1])
    assert summed.figures(columns) == pytest.approx(whole.figures(columns))


def test_message_stats():
    stats = message_stats(["Hello there!", "hello"], known_words={"hello"})
    assert stats["messages"] == 2
    assert stats["mean_chars"] == pytest.approx((12 + 5) / 2)
    assert stats["mean_words"] == pytest.approx((3 + 1) / 2)  # hello, there, !
    assert stats["distinct_word_share"] == pytest.approx(3 / 4)
    assert stats["known_word_share"] == pytest.approx(2 / 4)


def test_style_classifier_tells_two_writers_apart():
    loud = [f"WOW {w.upper()}!!!" for w in ("cats", "dogs", "rain", "tea", "code", "bugs", "sun", "snow")]
    quiet = [f"hmm {w}... lol" for w in ("cats", "dogs", "rain", "tea", "code", "bugs", "sun", "snow")]
    classifier = StyleClassifier().fit(loud[:6] + quiet[:6], [0] * 6 + [1] * 6)
    assert classifier.predict(loud[6:] + quiet[6:]).tolist() == [0, 0, 1, 1]
    figures = measures.style_figures(classifier, [0, 1], ["WOW TREES!!!", "hmm trees... lol"], ["hmm trees... lol", "hmm x... lol"])
    assert figures["real_acc"] == 1.0 and figures["generated_acc"] == 0.5 and figures["generated_vs_real"] == 0.5
    assert figures["chance"] == 0.5


def test_style_classifier_recognises_the_demo_personas(demo_prepared):
    """Real held-out demo messages are attributed to their persona far above chance: the classifier
    the style goal reads is able to tell the personas apart."""
    from fizzbot.artifacts.io import iter_jsonl

    def messages(name: str) -> tuple[list[str], list[str]]:
        pairs = [split_messages(row["target"])[0] for _, row in iter_jsonl(demo_prepared / name)]
        return [t for t, _ in pairs], [c for _, c in pairs]

    train_tokens, train_texts = messages("train.jsonl")
    val_tokens, val_texts = messages("val.jsonl")
    labels = {t: i for i, t in enumerate(sorted(set(train_tokens)))}
    classifier = StyleClassifier().fit(train_texts, [labels[t] for t in train_tokens])
    predicted = classifier.predict(val_texts)
    accuracy = float(np.mean(predicted == np.array([labels[t] for t in val_tokens])))
    assert accuracy > 3 / len(labels), accuracy
