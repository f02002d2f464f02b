#!/usr/bin/env python
"""What one CPU core does with configs/train_cpu.yaml's tiny model, alone: forward, backward and an
AdamW step on random batches, one thread, no Ray, no DDP. The ceiling a training worker is compared
with (docs/BENCHMARKS.md, "two workers that wait for each other"); run two at once to see both cores.

    .venv/bin/python benchmarks/cpu_step_alone.py                     # batch 8 x 104 tokens
    .venv/bin/python benchmarks/cpu_step_alone.py & .venv/bin/python benchmarks/cpu_step_alone.py
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fizzbot.train.objective import TargetOnlyLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=104, help="tokens a row (the Ubuntu rows average ~105)")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vocab = 4096 + 132  # the tiny BPE, 128 speaker tokens and the chat tokens
    config = LlamaConfig(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=vocab, tie_word_embeddings=True, max_position_embeddings=1024)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    ids = torch.randint(0, vocab, (args.batch, args.tokens))
    mask = torch.ones_like(ids)
    mask[:, -8:] = 0  # some padding, as a bucketed batch has
    labels = ids.clone()
    labels[:, 0] = -100
    labels[mask == 0] = -100
    for name, objective in (("Hugging Face loss", lambda: model(input_ids=ids, attention_mask=mask, labels=labels).loss),
                            ("fizzbot target-only loss", lambda: TargetOnlyLM(model)(ids, mask, labels))):
        times = []
        for _ in range(args.steps):
            started = time.perf_counter()
            objective().backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - started)
        median = sorted(times[2:])[len(times[2:]) // 2]
        print(f"{name}: {median * 1000:.0f} ms a step, {args.batch * args.tokens / median:,.0f} tokens/s on one core")


if __name__ == "__main__":
    main()
