"""The `fizzbot` console script: one subcommand per stage, each a thin call into the library.

    fizzbot demo-data --output data/demo
    fizzbot prepare --input data/demo --output data/prepared
    fizzbot train --config configs/train_cpu.yaml training.max_steps=100
    fizzbot generate --latest --speaker alice --content "hello everyone"
    fizzbot serve --config configs/serve.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fizzbot.config import ConfigError, FizzbotConfig, load_config
from fizzbot.data.messages import InputError

OVERRIDES_HELP = "config overrides as key.sub=value (for example training.max_steps=50)"


def _config(args: argparse.Namespace, extra: list[str] | None = None) -> FizzbotConfig:
    return load_config(args.config, list(extra or []) + list(args.overrides))


def _add_config_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--config", default=default, help=f"YAML config file (default: {default or 'built-in defaults'})")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)


# --- data ----------------------------------------------------------------------------------------


def cmd_demo_data(args: argparse.Namespace) -> int:
    from fizzbot.data.demo import write_demo_corpus

    summary = write_demo_corpus(args.output, seed=args.seed)
    total = sum(summary["messages"].values()) if isinstance(summary.get("messages"), dict) else summary.get("messages")
    print(f"demo corpus: {total} messages in {len(summary['files'])} channel files -> {args.output}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    extra = []
    if args.input:
        extra.append("data.inputs=" + _yaml_list(args.input))
    if args.output:
        extra.append(f"data.output={args.output}")
    if args.format:
        extra.append(f"data.format={args.format}")
    cfg = _config(args, extra)
    from fizzbot.data.pipeline import prepare

    summary = prepare(cfg.data, use_ray=not args.no_ray)
    print(
        f"prepared {summary.train_examples:,} train and {summary.val_examples:,} val examples "
        f"from {summary.messages_kept:,} of {summary.messages_read:,} messages "
        f"({summary.channels} channels, {summary.speakers} speaker tokens) in {summary.seconds:.1f}s\n"
        f"  {summary.output}/train.jsonl, val.jsonl, speaker_map.json, stats.json, report.png"
    )
    return 0


def _yaml_list(items: list[str]) -> str:
    import json

    return json.dumps([str(Path(p)) for p in items])


# --- training ------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from fizzbot.train.trainer import train

    result = train(cfg, use_ray=not args.no_ray)
    ev = result.metrics
    summary = ""
    if ev:
        summary = (
            f"  val_loss {ev['val_loss']:.3f} (unigram baseline {ev['unigram_loss']:.3f}), "
            f"next-speaker accuracy {ev['speaker_acc']:.3f} (majority baseline {ev['majority_acc']:.3f})\n"
        )
    print(
        f"trained to step {result.final_step} in {result.seconds:.0f}s\n{summary}"
        f"  run: {result.run_dir}\n  best checkpoint: {result.best_checkpoint}"
    )
    return 0


# --- entry point ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fizzbot",
        description="Learn how a group chat talks: prepare chat exports, fine-tune a model on Ray, serve it over HTTP.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo-data", help="write the built-in demo corpus (seed format)")
    p.add_argument("--output", required=True, help="folder to write the channel files into")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser(
        "prepare",
        help="chat exports -> train/val JSONL, speaker map, stats",
        description="Read chat exports (seed JSON, DiscordChatExporter JSON/CSV, Slack, Telegram, IRC) and "
        "write OUTPUT/train.jsonl, val.jsonl, speaker_map.json, stats.json and report.png, on Ray Data.",
    )
    p.add_argument("--input", action="append", help="an export file or folder (repeatable); default data.inputs")
    p.add_argument("--output", help="output folder; default data.output")
    p.add_argument("--format", help="export format (auto, seed, discord, discord_csv, slack, telegram, irc)")
    p.add_argument("--no-ray", action="store_true", help="run the same stages in this one process (debugging)")
    _add_config_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "train",
        help="fine-tune on prepared data with Ray Train (LoRA, QLoRA, full)",
        description="Train on data.path with Ray Train's TorchTrainer; writes run.dir/run.name/<timestamp>/ with "
        "config, metrics.jsonl, TensorBoard events, loss_curves.png and checkpoint-<step>/ folders. The same "
        "command with the same run.name resumes the newest unfinished run.",
    )
    p.add_argument("--no-ray", action="store_true", help="train in this one process, without Ray (debugging)")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, InputError, FileNotFoundError) as exc:
        print(f"fizzbot {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fizzbot {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
