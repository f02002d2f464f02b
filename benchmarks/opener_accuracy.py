#!/usr/bin/env python
"""Next-speaker accuracy on conversation openers and on every other target, for checkpoints of the
demo trained with and without `data.openers` (issue 9: who starts a conversation is now learned).

    .venv/bin/python benchmarks/opener_accuracy.py --model-dir runs/demo-openers/<stamp>/checkpoint-300 \
        --model-dir runs/demo-noopeners/<stamp>/checkpoint-300 [--corpus-seed 1] [--others 2000]

The evaluation data is a demo corpus the checkpoints never saw (`--corpus-seed`, default 1: the same
personas and habits, other conversations), prepared here without Ray with openers on and with the
first checkpoint's speaker map (`data.speaker_map`, so every persona keeps its token). Every target
of that corpus is scored: the model's most likely speaker token after the context (BOS + context
ids, trimmed to `--max-len` by the contract's `trim_ids`) against the target's speaker. Printed per
checkpoint: accuracy on openers (empty context) and on a fixed sample of `--others` other targets,
beside the best constant guess for each group (its most frequent speaker).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def score(model_dir: Path, rows: list[dict], max_len: int) -> float:
    import torch

    from fizzbot.artifacts.loading import load_for_inference
    from fizzbot.chat.render import trim_ids

    model, tokenizer, smap = load_for_inference(model_dir, device=torch.device("cpu"))
    speaker_ids = tokenizer.convert_tokens_to_ids(smap.tokens)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    correct = 0
    with torch.no_grad():
        for row in rows:
            ids = tokenizer(row["context"], add_special_tokens=False)["input_ids"]
            ids, _ = trim_ids(ids, max_len - len(bos), set(speaker_ids))
            logits = model(input_ids=torch.tensor([bos + ids])).logits[0, -1]
            best = speaker_ids[int(logits[speaker_ids].argmax())]
            correct += best == tokenizer.convert_tokens_to_ids(row["speaker"])
    return correct / max(len(rows), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", action="append", required=True, help="a checkpoint (repeatable)")
    parser.add_argument("--corpus-seed", type=int, default=1)
    parser.add_argument("--others", type=int, default=2000, help="how many non-opener targets to score")
    parser.add_argument("--max-len", type=int, default=320, help="token budget of a context (demo: training.max_seq_len)")
    args = parser.parse_args(argv)

    from fizzbot.config import DataConfig
    from fizzbot.data.demo import write_demo_corpus
    from fizzbot.data.pipeline import prepare

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        write_demo_corpus(corpus, seed=args.corpus_seed)
        data = DataConfig(inputs=[str(corpus)], output=str(Path(tmp) / "prepared"), val_split=0, max_context_messages=8,
                          max_context_chars=1200, max_speakers=16, speaker_map=args.model_dir[0])
        summary = prepare(data, use_ray=False, report=False)
        rows = [json.loads(line) for line in (summary.output / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    openers = [r for r in rows if r["context"] == ""]
    others = random.Random(0).sample([r for r in rows if r["context"]], min(args.others, len(rows) - len(openers)))
    for name, group in (("openers", openers), ("others", others)):
        top, n = Counter(r["speaker"] for r in group).most_common(1)[0]
        print(f"{name}: {len(group)} targets; best constant guess {top} {n / len(group):.3f}")
    for model_dir in args.model_dir:
        print(f"{model_dir}: openers {score(Path(model_dir), openers, args.max_len):.3f}, "
              f"others {score(Path(model_dir), others, args.max_len):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
