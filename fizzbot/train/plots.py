"""Loss curves of a run, drawn from its metrics.jsonl."""

from __future__ import annotations

from pathlib import Path


def draw_loss_curves(metrics: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [m for m in metrics if m.get("kind") == "train"]
    evals = [m for m in metrics if m.get("kind") == "eval"]
    if not train and not evals:
        return
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    if train:
        ax_loss.plot([m["step"] for m in train], [m["loss"] for m in train], label="train loss", color="#4c72b0")
    if evals:
        steps = [m["step"] for m in evals]
        last = evals[-1]
        ax_loss.plot(steps, [m["val_loss"] for m in evals], "o-", label="validation loss", color="#c44e52")
        if last.get("no_context_loss") is not None:
            ax_loss.plot(steps, [m.get("no_context_loss") for m in evals], "o:", label="validation, context removed", color="#dd8452")
        ax_loss.axhline(last["unigram_loss"], linestyle="--", color="gray", label="unigram baseline")
        if last.get("bigram_loss") is not None:
            ax_loss.axhline(last["bigram_loss"], linestyle="-.", color="gray", label="bigram baseline")
        ax_acc.plot(steps, [m["speaker_acc"] for m in evals], "o-", label="next-speaker accuracy", color="#55a868")
        ax_acc.axhline(last["majority_acc"], linestyle="--", color="gray", label="majority-speaker baseline")
        if last.get("named_speaker_acc") is not None:
            ax_acc.plot(steps, [m.get("named_speaker_acc") for m in evals], "o-", label="named-speaker accuracy", color="#8172b3")
            best = max(v for v in (last.get("named_majority_acc"), last.get("named_bigram_acc"), 0.0) if v is not None)
            ax_acc.axhline(best, linestyle=":", color="#8172b3", label="best named-speaker baseline")
        ax_acc.set_ylim(0, 1)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss per target token (nats)")
    ax_loss.legend()
    ax_acc.set_xlabel("step")
    ax_acc.legend()
    fig.suptitle("fizzbot training")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
