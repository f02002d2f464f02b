"""`fizzbot eval`: does the model sound like its channel? Every measure beside its baselines, in one report.

    fizzbot eval --latest                                  the newest run's best checkpoint (run.dir)
    fizzbot eval --model-dir runs/demo/<stamp>/checkpoint-300 [--data data/demo-prepared]
    ray job submit --working-dir . -- python jobs/eval.py --config configs/demo.yaml --latest

Loads the checkpoint, scores a seeded sample of the validation rows with their context and with it
removed (losses, who speaks next), fits the baselines on the training rows, generates through the
engine in batches (messages as each style speaker from real contexts; a few conversations), and
writes `<checkpoint>/eval/`: `report.html`, its pictures and `eval.json` (every figure in the page).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fizzbot.artifacts import checkpoint as ckpt
from fizzbot.chat.render import split_messages
from fizzbot.chat.speakers import SpeakerMap
from fizzbot.config import FizzbotConfig, load_config
from fizzbot.eval import measures

EVAL_DIR = "eval"
EVAL_JSON = "eval.json"
REPORT = "report.html"


def _log(message: str) -> None:
    print(f"[eval] {message}", file=sys.stderr, flush=True)


@dataclass
class EvalOutcome:
    output: Path  # the eval/ folder
    doc: dict  # eval.json
    seconds: float

    @property
    def report(self) -> Path:
        return self.output / REPORT


def eval_config(model_dir: Path, config: str | Path | None = None, overrides: list[str] | None = None, data: str | None = None) -> FizzbotConfig:
    """The config an evaluation runs with: `config` if given, else the one the checkpoint was trained
    with (its data, its max_seq_len, its generation settings), then the overrides; `data` replaces
    data.path (and drops a data.val_jsonl that belonged to the old data)."""
    source = config if config is not None else (model_dir / ckpt.CONFIG_FILE if (model_dir / ckpt.CONFIG_FILE).is_file() else None)
    extra = [f"data.path={data}", "data.val_jsonl=null"] if data else []
    return load_config(source, list(overrides or []) + extra)


# --- data ------------------------------------------------------------------------------------------


def last_message(context: str) -> str:
    """The newest message of a context (with its newline): all the baselines read of a context."""
    if not context:
        return ""
    cut = context.rfind("<EOT>\n", 0, len(context) - len("<EOT>\n"))
    return context[cut + len("<EOT>\n"):] if cut >= 0 else context


def _data(cfg: FizzbotConfig, speaker_map: SpeakerMap, workdir: Path):
    """Train and validation files of the data, refusing data whose speaker tokens mean other people."""
    from fizzbot.train.trainer import resolve_data

    data = resolve_data(cfg, workdir)
    ours, theirs = speaker_map.token_to_username(), data.speaker_map.token_to_username()
    if ours != theirs:
        differ = sorted(t for t in set(ours) | set(theirs) if ours.get(t) != theirs.get(t))
        raise ValueError(
            f"{cfg.data.path}: its speaker map does not match the checkpoint's ({', '.join(differ[:5])} differ); "
            "evaluate on the data the model was trained on (--data)"
        )
    return data


def _sample(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(rng.choice(n, size=limit, replace=False))


def _continuations(contexts: list[str], targets: list[str]) -> np.ndarray:
    """For each validation row, how many of the rows from it on continue one conversation: row i+1's
    context ends with row i's target (the rows of a segment follow each other in the file)."""
    run = np.ones(len(targets), dtype=np.int64)
    for i in range(len(targets) - 2, -1, -1):
        if contexts[i + 1].endswith(targets[i] + "\n"):
            run[i] = run[i + 1] + 1
    return run


def _content(target: str) -> tuple[str, str]:
    """(speaker token, text) of a rendered message."""
    found = split_messages(target)
    return found[0] if found else ("", target)


# --- the evaluation ----------------------------------------------------------------------------------


def target_loss(model_dir: str | Path, contexts: list[str], targets: list[str], cfg: FizzbotConfig) -> float:
    """Mean loss per target token of a checkpoint on {context, target} rows (what `fizzbot update`
    compares an old and a new checkpoint on)."""
    import torch

    from fizzbot.artifacts.loading import load_for_inference
    from fizzbot.infer.engine import resolve_device
    from fizzbot.train.data import RowTokenizer
    from fizzbot.train.objective import TargetOnlyLM, score_rows

    device = resolve_device(cfg.generate.device)
    model, tokenizer, speaker_map = load_for_inference(Path(model_dir), device=device, tokenizer_model=cfg.generate.tokenizer_model)
    speaker_ids = tokenizer.convert_tokens_to_ids(speaker_map.tokens)
    rows = RowTokenizer(tokenizer, cfg.training.max_seq_len, speaker_ids)(contexts, targets, where=str(model_dir))
    order = np.argsort(rows.lengths(), kind="stable")
    batches = [order[i : i + cfg.eval.batch_size] for i in range(0, len(order), cfg.eval.batch_size)]
    scores = score_rows(TargetOnlyLM(model), rows, batches, tokenizer.pad_token_id, torch.tensor(speaker_ids, device=device), device)
    return float(np.sum(scores.loss) / max(np.sum(scores.tokens), 1))


def evaluate_checkpoint(model_dir: str | Path, cfg: FizzbotConfig, *, output: str | Path | None = None) -> EvalOutcome:
    import tempfile

    import torch

    from fizzbot.artifacts.io import atomic_directory
    from fizzbot.artifacts.loading import load_for_inference
    from fizzbot.eval.report import write_report
    from fizzbot.infer.engine import GenerationEngine, resolve_device
    from fizzbot.train.data import RowTokenizer, context_free_start, read_rows
    from fizzbot.train.objective import TargetOnlyLM, score_rows

    started = time.perf_counter()
    model_dir = Path(model_dir)
    e = cfg.eval
    rng = np.random.default_rng(e.seed)
    device = resolve_device(cfg.generate.device)
    model, tokenizer, speaker_map = load_for_inference(model_dir, device=device, tokenizer_model=cfg.generate.tokenizer_model)
    columns = measures.SpeakerColumns.of(speaker_map, tokenizer.convert_tokens_to_ids(speaker_map.tokens))
    tokenize = RowTokenizer(tokenizer, cfg.training.max_seq_len, columns.token_ids.tolist())
    timings: dict[str, float] = {}

    with tempfile.TemporaryDirectory(prefix="fizzbot-eval-") as workdir:
        data = _data(cfg, speaker_map, Path(workdir))
        train_contexts, train_targets = read_rows(data.train_path)
        val_contexts, val_targets = read_rows(data.val_path)
    _log(f"{model_dir}: {len(train_targets):,} training and {len(val_targets):,} validation rows from {cfg.data.path}")

    # The baselines read the newest context message and the target only: tokenising whole training
    # contexts would cost more than the rest of the evaluation.
    clock = time.perf_counter()
    train_rows = tokenize([last_message(c) for c in train_contexts], train_targets, where=str(data.train_path))
    chosen = _sample(len(val_targets), e.max_rows, rng)
    val_rows = tokenize([val_contexts[i] for i in chosen], [val_targets[i] for i in chosen], where=str(data.val_path))
    refs = measures.References.build(train_rows, val_rows, columns, len(tokenizer))
    timings["baselines"] = time.perf_counter() - clock

    clock = time.perf_counter()
    _log(f"scoring {len(val_rows):,} validation rows with and without their context")
    order = np.argsort(val_rows.lengths(), kind="stable")
    batches = [order[i : i + e.batch_size] for i in range(0, len(order), e.batch_size)]
    objective = TargetOnlyLM(model)
    speaker_ids = torch.tensor(columns.token_ids, device=device)
    pad_id = tokenizer.pad_token_id
    scores = score_rows(objective, val_rows, batches, pad_id, speaker_ids, device)
    bare = score_rows(objective, val_rows.without_context(context_free_start(tokenizer)), batches, pad_id, speaker_ids, device)
    tally = measures.Tally(len(columns))
    tally.add(scores.rows, refs, scores.loss, scores.tokens, bare.loss, bare.tokens, scores.speaker_logits)
    figures = tally.figures(columns)
    timings["scoring"] = time.perf_counter() - clock
    _log(measures.summary_line(figures))

    # Per-row views for the report, in validation-row order.
    row_loss, row_tokens, bare_loss = (np.zeros(len(val_rows)) for _ in range(3))
    row_loss[scores.rows], row_tokens[scores.rows], bare_loss[bare.rows] = scores.loss, scores.tokens, bare.loss

    g = cfg.generate
    engine = GenerationEngine(model, tokenizer, speaker_map, max_prompt_tokens=g.max_prompt_tokens, max_batch_size=g.max_batch_size,
                              device=device, graphs=g.compile and device.type == "cuda", max_cache_len=g.max_cache_len,
                              kv_cache_tokens=g.kv_cache_tokens, prefill_chunk_tokens=g.prefill_chunk_tokens)
    clock = time.perf_counter()
    style = _style(cfg, engine, columns, refs, train_targets, val_contexts, val_targets, rng)
    conversations = _conversations(cfg, engine, speaker_map, val_contexts, val_targets, rng)
    timings["generation"] = time.perf_counter() - clock

    doc = {
        "format": "fizzbot-eval/1",
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "checkpoint": str(model_dir.resolve()),
        "data": str(cfg.data.path),
        "val_rows_total": len(val_targets),
        "train_rows": len(train_targets),
        "train_empty_context_share": refs.train_empty_context_share,
        "figures": figures,
        "speakers": _speaker_table(tally, columns),
        "confusion": {"labels": list(columns.names), "counts": tally.confusion["model"].astype(int).tolist()},
        "by_context_messages": _by_context(refs.context_messages, row_loss, row_tokens, bare_loss),
        "style": style,
        "conversations": conversations,
        "sampling": {k: getattr(cfg.generate, k) for k in ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    doc["goals"] = goals(doc)
    target = Path(output) if output is not None else model_dir / EVAL_DIR
    with atomic_directory(target) as folder:
        write_report(doc, folder)
        # eval.json last: the page and its pictures are in place when it appears.
        (folder / EVAL_JSON).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    seconds = time.perf_counter() - started
    _log(f"wrote {target / REPORT} in {seconds:.0f}s")
    return EvalOutcome(target, doc, seconds)


def _speaker_table(tally: measures.Tally, columns: measures.SpeakerColumns) -> list[dict]:
    """Per speaker token: validation targets, and the model's precision, recall and F1 (all speakers)."""
    confusion = tally.confusion["model"]
    precision, recall, f1 = measures.per_speaker_f1(confusion)
    return [
        {
            "token": columns.tokens[c],
            "username": columns.names[c],
            "long_tail": c == columns.other,
            "val_targets": int(confusion[c].sum()),
            "predicted": int(confusion[:, c].sum()),
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
        }
        for c in range(len(columns))
    ]


def _by_context(messages: np.ndarray, loss: np.ndarray, tokens: np.ndarray, bare: np.ndarray) -> list[dict]:
    """Loss with and without the context, by the number of messages in it."""
    out = []
    for k in np.unique(messages):
        rows = messages == k
        n = tokens[rows].sum()
        if n:
            out.append({
                "context_messages": int(k), "rows": int(rows.sum()), "tokens": int(n),
                "loss": float(loss[rows].sum() / n), "no_context_loss": float(bare[rows].sum() / n),
            })
    return out


def _style(cfg: FizzbotConfig, engine, columns: measures.SpeakerColumns, refs: measures.References,
           train_targets: list[str], val_contexts: list[str], val_targets: list[str], rng: np.random.Generator) -> dict | None:
    """Messages generated as each style speaker from the contexts of that speaker's real validation
    messages, attributed by a character n-gram classifier trained on real training messages."""
    from fizzbot.infer.engine import Request, SamplingParams

    e = cfg.eval
    if e.style_speakers == 0:
        return None
    tokens = columns.tokens
    train_by_token: dict[str, list[str]] = {}
    for target in train_targets:
        token, text = _content(target)
        train_by_token.setdefault(token, []).append(text)
    val_by_token: dict[str, list[int]] = {}
    for i, target in enumerate(val_targets):
        val_by_token.setdefault(_content(target)[0], []).append(i)
    named = [tokens[c] for c in columns.named]
    eligible = [t for t in named if len(train_by_token.get(t, ())) >= e.style_min_messages and val_by_token.get(t)]
    eligible.sort(key=lambda t: -len(train_by_token[t]))
    chosen = eligible[: e.style_speakers]
    if len(chosen) < 2:
        _log("style: fewer than 2 speakers with enough messages; skipped")
        return None
    names = engine.speaker_map.token_to_username()
    texts, labels, known = [], [], []
    for label, token in enumerate(chosen):
        pool = train_by_token[token]
        picked = rng.choice(len(pool), size=min(len(pool), e.style_train_messages), replace=False)
        texts.extend(pool[i] for i in picked)
        labels.extend([label] * len(picked))
        known.append({w for i in picked for w in measures.words(pool[i])})
    classifier = measures.StyleClassifier().fit(texts, labels)

    rows, speakers = [], []
    for label, token in enumerate(chosen):
        pool = val_by_token[token]
        picked = np.sort(rng.choice(len(pool), size=min(len(pool), e.style_messages), replace=False))
        rows.extend(pool[i] for i in picked)
        speakers.extend([label] * len(picked))
    g = cfg.generate
    requests = [
        Request(val_contexts[i], SamplingParams(
            max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
            repetition_penalty=g.repetition_penalty, turns=1, seed=e.seed * 1_000_003 + n, force_speaker=chosen[label],
        ))
        for n, (i, label) in enumerate(zip(rows, speakers))
    ]
    _log(f"style: generating {len(requests)} messages as {len(chosen)} speakers")
    results = engine.generate(requests)
    real = [_content(val_targets[i])[1] for i in rows]
    generated = [_content(r.text)[1] for r in results]
    overall = measures.style_figures(classifier, speakers, real, generated)
    speakers_arr = np.asarray(speakers)
    per_speaker = []
    for label, token in enumerate(chosen):
        mine = np.flatnonzero(speakers_arr == label)
        per_speaker.append({
            "username": names[token],
            "messages": int(len(mine)),
            "train_messages": len(train_by_token[token]),
            "real_acc": float(np.mean([overall["real_hits"][i] for i in mine])),
            "generated_acc": float(np.mean([overall["generated_hits"][i] for i in mine])),
            "real": measures.message_stats([real[i] for i in mine], known[label]),
            "generated": measures.message_stats([generated[i] for i in mine], known[label]),
        })
    return {
        "speakers": len(chosen),
        "classifier": "naive Bayes over character 1-4-grams, trained on real training messages",
        "classifier_train_messages": len(texts),
        "real_acc": overall["real_acc"],
        "generated_acc": overall["generated_acc"],
        "generated_vs_real": overall["generated_vs_real"],
        "chance": overall["chance"],
        "per_speaker": per_speaker,
        "samples": [
            {"username": names[chosen[speakers[n]]], "real": real[n], "generated": generated[n]}
            for n in range(0, len(rows), max(1, len(rows) // 8))
        ][:8],
    }


def _conversations(cfg: FizzbotConfig, engine, speaker_map: SpeakerMap, val_contexts: list[str], val_targets: list[str],
                   rng: np.random.Generator) -> list[dict]:
    """A few validation contexts with the real next messages and as many generated by the model
    (who speaks is the model's choice each turn)."""
    from fizzbot.chat.conversation import decode
    from fizzbot.infer.engine import Request, SamplingParams

    e = cfg.eval
    if e.conversations == 0 or not val_targets:
        return []
    turns = e.conversation_turns
    run = _continuations(val_contexts, val_targets)
    candidates = np.flatnonzero((run >= turns) & np.array([c.count("<EOT>\n") >= 2 for c in val_contexts]))
    if not len(candidates):
        candidates = np.flatnonzero(run >= 1)
    # Spread over the validation period: one pick from each of `conversations` equal slices.
    picks = [int(rng.choice(part)) for part in np.array_split(candidates, min(e.conversations, len(candidates))) if len(part)]
    g = cfg.generate
    requests = [
        Request(val_contexts[i], SamplingParams(
            max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
            repetition_penalty=g.repetition_penalty, turns=turns, seed=e.seed * 1_000_003 + 999_983 + i,
        ))
        for i in picks
    ]
    _log(f"generating {len(requests)} conversations of {turns} turns")
    results = engine.generate(requests)

    def lines(text: str) -> list[dict]:
        return [{"username": m.username, "content": m.content} for m in decode(text, speaker_map)]

    out = []
    for i, result in zip(picks, results):
        real = [val_targets[j] for j in range(i, min(i + turns, i + int(run[i])))]
        out.append({
            "row": i,
            "context": lines(val_contexts[i])[-6:],
            "real": lines("\n".join(real)),
            "generated": lines(result.text),
        })
    return out


# --- goals -----------------------------------------------------------------------------------------

# The goals for a channel model (fizzbot issue 14), read off this evaluation.
CONTEXT_GAIN_MIN = 0.3
NAMED_ACC_FACTOR = 1.5
BIGRAM_LOSS_FACTOR = 0.8
STYLE_RATIO_MIN = 0.5


def goals(doc: dict) -> list[dict]:
    f = doc["figures"]
    best = max((v for v in (f["named_majority_acc"], f["named_bigram_acc"]) if v is not None), default=None)
    out = [
        {"goal": "context gain (nats per target token)", "value": f["context_gain"], "target": CONTEXT_GAIN_MIN,
         "rule": f"at least {CONTEXT_GAIN_MIN}"},
        {"goal": "named-speaker accuracy", "value": f["named_speaker_acc"],
         "target": None if best is None else NAMED_ACC_FACTOR * best, "factor": NAMED_ACC_FACTOR,
         "rule": f"at least {NAMED_ACC_FACTOR} x the better speaker baseline"},
        {"goal": "target loss", "value": f["val_loss"],
         "target": None if f["bigram_loss"] is None else BIGRAM_LOSS_FACTOR * f["bigram_loss"], "factor": BIGRAM_LOSS_FACTOR,
         "rule": f"at most {BIGRAM_LOSS_FACTOR} x the bigram baseline", "at_most": True},
    ]
    style = doc.get("style")
    if style:
        out.append({"goal": "style: generated attributed / real attributed", "value": style["generated_vs_real"],
                    "target": STYLE_RATIO_MIN, "rule": f"at least {STYLE_RATIO_MIN}"})
    for g in out:
        value, target = g["value"], g["target"]
        g["met"] = None if value is None or target is None else (value <= target if g.get("at_most") else value >= target)
    if not doc.get("train_empty_context_share"):
        # No training row had an empty context: the loss without one is measured where the model never
        # learned anything, and the gain overstates what the context gives. No verdict.
        out[0]["met"] = None
        out[0]["note"] = ("not measurable: no training row had an empty context (prepare with "
                          "data.min_context_messages=0, or with conversation openers as targets)")
    return out
