"""The prepared data, drawn: speaker activity, message lengths, and what each filter dropped."""

from __future__ import annotations

from pathlib import Path

from fizzbot.chat.speakers import SpeakerMap


def draw_report(stats: dict, speaker_map: SpeakerMap, path: Path, top: int = 25) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.5))

    speakers = [s for s in speaker_map.speakers if not s.retired][:top]
    names = [f"{s.token} {s.username[:14]}" for s in speakers]
    values = [s.messages for s in speakers]
    if speaker_map.other_token:
        names.append(f"{speaker_map.other_token} others ({speaker_map.other_authors})")
        values.append(speaker_map.other_messages)
    ax = axes[0]
    ax.barh(range(len(values)), values, color="#4c72b0")
    ax.set_yticks(range(len(values)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("messages kept")
    ax.set_title(f"Speaker activity (top {len(speakers)} of {stats['speakers']['authors']} authors)")

    ax = axes[1]
    hist = stats["message_length_histogram"]
    ax.bar(range(len(hist)), list(hist.values()), color="#55a868")
    ax.set_xticks(range(len(hist)), list(hist.keys()), rotation=45, fontsize=7)
    ax.set_xlabel("characters")
    ax.set_ylabel("messages")
    ax.set_title("Message lengths")

    ax = axes[2]
    dropped = stats["totals"]["dropped"]
    labels = ["kept"] + list(dropped.keys())
    counts = [stats["totals"]["kept"]] + list(dropped.values())
    ax.bar(labels, counts, color=["#55a868"] + ["#c44e52"] * len(dropped))
    ax.set_yscale("symlog")
    ax.set_title(f"{stats['totals']['read']:,} messages read")
    ax.tick_params(axis="x", rotation=30)

    examples = stats["totals"]["examples"]
    fig.suptitle(f"fizzbot prepare: {examples['train']:,} train / {examples['val']:,} val examples, {len(stats['channels'])} channels")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
