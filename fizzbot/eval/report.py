"""The evaluation as one page a person reads: report.html and its pictures, drawn from eval.json only.

Every number on the page is a value of eval.json (or part of a text in it) written by `fmt`, so
the page cannot say something the JSON does not (a test checks it).
"""

from __future__ import annotations

import html
from pathlib import Path

PICTURES = {
    "speakers": "speakers.png",
    "confusion": "confusion.png",
    "context": "loss_by_context.png",
    "style": "style.png",
}


def fmt(value) -> str:
    """How every number appears on the page."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _e(value) -> str:
    return html.escape(fmt(value))


def write_report(doc: dict, folder: Path) -> list[Path]:
    """report.html and its PNGs into `folder`; returns the files written."""
    pictures = draw_pictures(doc, folder)
    page = folder / "report.html"
    page.write_text(render_html(doc, {p.stem: p.name for p in pictures}), encoding="utf-8")
    return [page, *pictures]


# --- pictures --------------------------------------------------------------------------------------


def draw_pictures(doc: dict, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    f = doc["figures"]

    def save(fig, key: str) -> None:
        path = folder / PICTURES[key]
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)

    # Who speaks next: the model against both baselines, on the named speakers.
    fig, ax = plt.subplots(figsize=(7, 3.6))
    groups = [("model", "named_speaker"), ("majority named speaker", "named_majority"), ("speaker bigram (turn-taking)", "named_bigram")]
    x = np.arange(len(groups))
    acc = [f.get(f"{key}_acc") or 0.0 for _, key in groups]
    f1 = [f.get(f"{key}_macro_f1") or 0.0 for _, key in groups]
    ax.bar(x - 0.2, acc, 0.4, label="accuracy", color="#4c72b0")
    ax.bar(x + 0.2, f1, 0.4, label="macro-F1", color="#dd8452")
    ax.set_xticks(x, [name for name, _ in groups])
    ax.set_ylim(0, 1)
    ax.set_title("next speaker, among the named speakers")
    ax.legend()
    save(fig, "speakers")

    # Confusion matrix over every speaker token, each true speaker's row normalised.
    counts = np.asarray(doc["confusion"]["counts"], dtype=float)
    labels = doc["confusion"]["labels"]
    if counts.size:
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        side = min(16, 3 + 0.22 * len(labels))
        fig, ax = plt.subplots(figsize=(side + 1.5, side))
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        ticks = np.arange(len(labels))
        short = [name[:14] for name in labels]
        size = 8 if len(labels) <= 24 else 5
        ax.set_xticks(ticks, short, rotation=90, fontsize=size)
        ax.set_yticks(ticks, short, fontsize=size)
        ax.set_xlabel("predicted next speaker")
        ax.set_ylabel("true next speaker")
        fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true speaker's rows")
        ax.set_title("who the model says speaks next")
        save(fig, "confusion")

    # Loss by context length, with and without the context, against the token baselines.
    rows = doc["by_context_messages"]
    if rows:
        fig, ax = plt.subplots(figsize=(7, 3.8))
        k = [r["context_messages"] for r in rows]
        ax.plot(k, [r["loss"] for r in rows], "o-", label="with the context", color="#c44e52")
        ax.plot(k, [r["no_context_loss"] for r in rows], "o:", label="context removed", color="#dd8452")
        if f.get("bigram_loss") is not None:
            ax.axhline(f["bigram_loss"], linestyle="-.", color="gray", label="bigram baseline (all rows)")
        ax.set_xlabel("messages in the context")
        ax.set_ylabel("loss per target token (nats)")
        ax.legend()
        twin = ax.twinx()
        twin.bar(k, [r["rows"] for r in rows], alpha=0.15, color="gray")
        twin.set_ylabel("rows")
        ax.set_zorder(twin.get_zorder() + 1)  # the lines over the bars
        ax.patch.set_visible(False)
        save(fig, "context")

    style = doc.get("style")
    if style:
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(style["per_speaker"]) + 2), 3.8))
        people = style["per_speaker"]
        x = np.arange(len(people))
        ax.bar(x - 0.2, [p["real_acc"] for p in people], 0.4, label="real held-out messages", color="#4c72b0")
        ax.bar(x + 0.2, [p["generated_acc"] for p in people], 0.4, label="generated as that speaker", color="#55a868")
        ax.axhline(style["chance"], linestyle="--", color="gray", label="chance")
        ax.set_xticks(x, [p["username"][:14] for p in people], rotation=45, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("attributed to the right speaker")
        ax.legend()
        save(fig, "style")
    return written


# --- the page --------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
td.text, th.text { text-align: left; }
.met { color: #2a7a2a; font-weight: bold; } .unmet { color: #b22; font-weight: bold; }
.side { display: flex; gap: 1.5em; } .side > div { flex: 1; }
.msg { margin: 0.2em 0; } .who { font-weight: bold; } .ctx { color: #666; }
img { max-width: 100%; }
"""


def _table(header: list[str], rows: list[list], text_columns: int = 1) -> str:
    head = "".join(f'<th class="text">{html.escape(h)}</th>' if i < text_columns else f"<th>{html.escape(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="text">{_e(v)}</td>' if i < text_columns else f"<td>{_e(v)}</td>" for i, v in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _messages(messages: list[dict], css: str = "") -> str:
    return "".join(
        f'<div class="msg {css}"><span class="who">{html.escape(m["username"])}</span>: {html.escape(m["content"])}</div>'
        for m in messages
    )


def _picture(pictures: dict[str, str], key: str, alt: str) -> str:
    name = pictures.get(Path(PICTURES[key]).stem)
    return f'<p><img src="{html.escape(name)}" alt="{html.escape(alt)}"></p>' if name else ""


def render_html(doc: dict, pictures: dict[str, str]) -> str:
    f = doc["figures"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>fizzbot eval</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Does it sound like the channel?</h1>",
        f"<p>Checkpoint <code>{_e(doc['checkpoint'])}</code>, data <code>{_e(doc['data'])}</code>, "
        f"evaluated {_e(doc['created'])}: {_e(f['rows'])} of {_e(doc['val_rows_total'])} validation rows "
        f"({_e(f['target_tokens'])} target tokens); baselines fitted on {_e(doc['train_rows'])} training rows.</p>",
        "<h2>Goals</h2>",
        _goals(doc["goals"]),
        "<h2>The target loss</h2>",
        "<p>Nats per target token, on the same target tokens. Context gain is the loss with the context removed "
        "minus the loss with it: what the conversation tells the model. Share of training rows with an empty context "
        f"(what the model learned a target after no context from): {_e(doc.get('train_empty_context_share'))}.</p>",
        _table(["measure", "value"], [
            ["loss with the context", f["val_loss"]],
            ["loss with the context removed", f["no_context_loss"]],
            ["context gain", f["context_gain"]],
            ["unigram baseline", f["unigram_loss"]],
            ["bigram baseline", f["bigram_loss"]],
            ["loss / bigram baseline", f["loss_vs_bigram"]],
            ["perplexity", f["val_ppl"]],
        ]),
        "<h3>By the length of the context</h3>",
        _picture(pictures, "context", "loss by context length"),
        _table(["messages in the context", "rows", "target tokens", "loss", "context removed"],
               [[r["context_messages"], r["rows"], r["tokens"], r["loss"], r["no_context_loss"]] for r in doc["by_context_messages"]], 0),
        "<h2>Who speaks next</h2>",
        "<p>Named speakers are those with a token of their own; the prediction among them is the model's most likely "
        "named speaker. The shared long-tail token is reported apart.</p>",
        _table(["measure", "model", "majority named speaker", "speaker bigram (turn-taking)"], [
            ["named-speaker accuracy", f["named_speaker_acc"], f["named_majority_acc"], f["named_bigram_acc"]],
            ["named-speaker macro-F1", f["named_speaker_macro_f1"], f["named_majority_macro_f1"], f["named_bigram_macro_f1"]],
        ]),
        _table(["measure", "value"], [
            ["rows whose next speaker is named", f["named_rows"]],
            ["accuracy over every speaker token", f["speaker_acc"]],
            ["majority speaker baseline", f["majority_acc"]],
            ["speaker bigram baseline", f["bigram_speaker_acc"]],
            ["long-tail token: share of the targets", f["others_share"]],
            ["long-tail token: recall", f["others_recall"]],
            ["long-tail token: precision", f["others_precision"]],
        ]),
        _picture(pictures, "speakers", "next-speaker accuracy and macro-F1 against the baselines"),
        _picture(pictures, "confusion", "speaker confusion matrix"),
        _table(["speaker", "token", "validation targets", "predicted", "precision", "recall", "F1"],
               [[s["username"], s["token"], s["val_targets"], s["predicted"], s["precision"], s["recall"], s["f1"]] for s in doc["speakers"]], 2),
        _style_section(doc.get("style"), pictures),
        _conversations_section(doc["conversations"], doc["sampling"]),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _goals(goals: list[dict]) -> str:
    rows = []
    for g in goals:
        met = g["met"]
        mark = '<span class="met">met</span>' if met else '<span class="unmet">not met</span>' if met is not None else "n/a"
        if g.get("note"):
            mark += f" ({html.escape(g['note'])})"
        rows.append(f'<tr><td class="text">{html.escape(g["goal"])}</td><td>{_e(g["value"])}</td>'
                    f'<td class="text">{html.escape(g["rule"])}: {_e(g["target"])}</td><td class="text">{mark}</td></tr>')
    return '<table><tr><th class="text">goal</th><th>value</th><th class="text">needed</th><th class="text"></th></tr>' + "".join(rows) + "</table>"


def _style_section(style: dict | None, pictures: dict[str, str]) -> str:
    if not style:
        return "<h2>Style</h2><p>Not measured (eval.style_speakers is 0, or too few speakers have enough messages).</p>"
    people = style["per_speaker"]
    rows = [
        [p["username"], p["messages"], p["real_acc"], p["generated_acc"], p["real"]["mean_chars"], p["generated"]["mean_chars"],
         p["real"]["mean_words"], p["generated"]["mean_words"], p["real"]["distinct_word_share"], p["generated"]["distinct_word_share"],
         p["real"]["known_word_share"], p["generated"]["known_word_share"]]
        for p in people
    ]
    samples = "".join(
        f'<tr><td class="text">{html.escape(s["username"])}</td><td class="text">{html.escape(s["real"])}</td>'
        f'<td class="text">{html.escape(s["generated"])}</td></tr>'
        for s in style["samples"]
    )
    return "\n".join([
        "<h2>Style</h2>",
        f"<p>A classifier ({html.escape(style['classifier'])}; {_e(style['classifier_train_messages'])} messages of "
        f"{_e(style['speakers'])} speakers) says who wrote each message. Real held-out messages, and messages generated "
        "as the same speaker from the same contexts:</p>",
        _table(["measure", "value"], [
            ["attributed correctly, real", style["real_acc"]],
            ["attributed correctly, generated", style["generated_acc"]],
            ["generated / real", style["generated_vs_real"]],
            ["chance", style["chance"]],
        ]),
        _picture(pictures, "style", "style attribution per speaker"),
        _table(["speaker", "messages", "real attributed", "generated attributed", "chars real", "chars generated",
                "words real", "words generated", "distinct words real", "distinct words generated",
                "words known real", "words known generated"], rows),
        '<table><tr><th class="text">speaker</th><th class="text">real</th><th class="text">generated</th></tr>' + samples + "</table>",
    ])


def _conversations_section(conversations: list[dict], sampling: dict) -> str:
    if not conversations:
        return ""
    settings = ", ".join(f"{html.escape(k)} {_e(v)}" for k, v in sampling.items())
    parts = ["<h2>Real and generated conversations</h2>", f"<p>Validation contexts, then what was said and what the model says ({settings}).</p>"]
    for c in conversations:
        parts.append(
            f'<h3>Validation row {_e(c["row"])}</h3><div class="ctx">{_messages(c["context"])}</div>'
            f'<div class="side"><div><h4>real</h4>{_messages(c["real"])}</div>'
            f'<div><h4>generated</h4>{_messages(c["generated"])}</div></div>'
        )
    return "\n".join(parts)
