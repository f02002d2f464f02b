"""The `fizzbot` console script: one subcommand per stage, each a thin call into the library.

    fizzbot demo-data --output data/demo
    fizzbot prepare --input data/demo --output data/prepared
    fizzbot train --config configs/train_cpu.yaml training.max_steps=100
    fizzbot generate --latest --speaker alice --content "hello everyone"
    fizzbot serve --config configs/serve.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

from fizzbot.config import ConfigError, FizzbotConfig, list_override, load_config
from fizzbot.errors import InputError

_OVERRIDE_RE = re.compile(r"^[A-Za-z_][\w.]*=")
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
        extra.append(list_override("data.inputs", [str(Path(p)) for p in args.input]))
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


# --- generation and decoding -------------------------------------------------------------------------


def _model_dir(args: argparse.Namespace, cfg: FizzbotConfig) -> Path:
    if getattr(args, "model_dir", None):
        return Path(args.model_dir)
    from fizzbot.artifacts.checkpoint import find_latest

    return find_latest(cfg.run.dir)


def _read_context(path: str) -> list[dict] | str:
    """A context file: JSON list / JSON lines of {username, content}, or raw text with speaker tokens."""
    import json

    text = Path(path).read_text(encoding="utf-8")
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise InputError(f"malformed JSON: {exc.msg}", path=path, line=exc.lineno) from None
    if stripped.startswith("{"):
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f"malformed JSON: {exc.msg}", path=path, line=number) from None
        return rows
    return text


def cmd_generate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    g = cfg.generate
    from fizzbot.chat.conversation import decode, encode_messages, format_lines
    from fizzbot.infer.engine import Request, SamplingParams, engine_from_checkpoint

    model_dir = _model_dir(args, cfg)
    engine = engine_from_checkpoint(
        model_dir,
        device=g.device,
        tokenizer_model=args.tokenizer_model or g.tokenizer_model,
        max_prompt_tokens=g.max_prompt_tokens,
        max_batch_size=g.max_batch_size,
        compile=g.compile,
        max_cache_len=g.max_cache_len,
    )
    smap = engine.speaker_map
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens or g.max_new_tokens,
        temperature=g.temperature if args.temperature is None else args.temperature,
        top_p=args.top_p or g.top_p,
        top_k=g.top_k,
        repetition_penalty=args.repetition_penalty or g.repetition_penalty,
        turns=args.turns or g.turns,
        eos_stop=g.eos_stop and not args.no_eos_stop,
        seed=g.seed if args.seed is None else args.seed,
        force_speaker=smap.resolve(args.next_speaker) if args.next_speaker else None,
        forbid_speakers=tuple(smap.resolve(name) for name in (args.forbid or g.forbid_speakers)),
    )
    prompt = ""
    if args.context_file:
        context = _read_context(args.context_file)
        prompt = context if isinstance(context, str) else encode_messages(context, smap)
        if prompt and not prompt.endswith("\n"):
            prompt += "\n"
    if args.content is not None:
        if not args.speaker:
            raise InputError("--content needs --speaker (who says it)", path="--speaker")
        prompt += encode_messages([{"speaker": smap.resolve(args.speaker), "content": args.content}], smap)

    def show(text: str) -> None:
        print(text if args.raw else format_lines(decode(text, smap)), flush=True)

    if not args.interactive:
        (result,) = engine.generate([Request(prompt, params)])
        show(result.text)
        return 0
    if not args.speaker:
        raise InputError("--interactive needs --speaker: the user you type as", path="--speaker")
    you = smap.resolve(args.speaker)
    names = smap.token_to_username()
    print(f"fizzbot chat: you are {names[you]} ({you}); model {model_dir}. Empty line lets the channel talk; /quit ends.", file=sys.stderr)
    turn = 0

    def reply() -> str:
        # Each turn draws with the next seed: a fixed seed makes the session reproducible, not every
        # answer the same draw (two different messages once got the identical reply).
        nonlocal turn
        seed = None if params.seed is None else params.seed + turn
        turn += 1
        (result,) = engine.generate([Request(prompt, dataclasses.replace(params, seed=seed))])
        show(result.text)
        return result.text + "\n"

    if prompt:
        prompt += reply()
    while True:
        if sys.stdin.isatty():
            try:
                line = input(f"{names[you]}> ")
            except EOFError:
                break
        else:  # piped input: no prompt in the output
            line = sys.stdin.readline()
            if not line:
                break
            line = line.rstrip("\n")
        if line.strip() in ("/quit", "/exit"):
            break
        if line.strip():
            prompt += encode_messages([{"speaker": you, "content": line}], smap)
        prompt += reply()
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from fizzbot.chat.speakers import SpeakerMap
    from fizzbot.chat.conversation import decode, format_lines

    if args.speaker_map:
        smap = SpeakerMap.load(args.speaker_map)
    else:
        cfg = _config(args)
        smap = SpeakerMap.load(_model_dir(args, cfg) / "speaker_map.json")
    text = args.text if args.text is not None else sys.stdin.read()
    text = text.replace("\\n", "\n")  # `--text "<S0> hi <EOT>\n<S1> yo"` as the original tool's README writes it
    output = format_lines(decode(text, smap))
    if output:
        print(output)
    return 0


# --- serving ---------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _config(args)
    import time as _time

    from ray import serve

    from fizzbot.pipeline import wait_healthy
    from fizzbot.serve.app import resolve_model_dir, run_server

    if cfg.serve.adapters:
        what = "adapters " + ", ".join(cfg.serve.adapters)
    else:
        what = resolve_model_dir(cfg)
        cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"model_dir": what})})
    url = run_server(cfg)
    wait_healthy(url)
    print(f"fizzbot serving {what}\n  {url}/v1/generate  (OpenAI-compatible: {url}/v1)", flush=True)
    if not cfg.serve.blocking:
        return 0
    try:
        while True:
            _time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down", file=sys.stderr)
        serve.shutdown()
    return 0


# --- the whole job -----------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from fizzbot.pipeline import run_demo

    return run_demo(cfg, Path(args.corpus))


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

    p = sub.add_parser(
        "generate",
        help="continue a conversation from a checkpoint",
        description="Generate the next messages of a conversation: the model picks who speaks next each turn. "
        "Prints decoded `username: message` lines (--raw: speaker tokens).",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--latest", action="store_true", help="the newest run's best checkpoint (under run.dir)")
    where.add_argument("--model-dir", help="a checkpoint folder")
    p.add_argument("--speaker", help="username or token of the prompt message's author (and yours with --interactive)")
    p.add_argument("--content", help="the prompt message")
    p.add_argument("--context-file", help="earlier messages: JSON list or JSON lines of {username, content}, or raw text")
    p.add_argument("--turns", type=int, help="messages to generate (default generate.turns)")
    p.add_argument("--max-new-tokens", type=int, help="token budget per message (default generate.max_new_tokens)")
    p.add_argument("--temperature", type=float, help="0 is greedy (default generate.temperature)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (default generate.top_p)")
    p.add_argument("--repetition-penalty", type=float, help="(default generate.repetition_penalty)")
    p.add_argument("--no-eos-stop", action="store_true", help="do not stop at the model's end-of-sequence token")
    p.add_argument("--seed", type=int, help="sampling seed: same seed, same output")
    p.add_argument("--next-speaker", help="force who speaks first (username or token)")
    p.add_argument("--forbid", action="append", help="never speak as this user (repeatable)")
    p.add_argument("--raw", action="store_true", help="print raw text with speaker tokens")
    p.add_argument("--interactive", action="store_true", help="chat: you type as --speaker, the channel answers")
    p.add_argument("--tokenizer-model", help="tokenizer folder for a checkpoint saved without one")
    _add_config_args(p, default=None)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "decode",
        help="raw text with speaker tokens -> username: message lines",
        description="Decode `<S0> hi <EOT>` text into `username: hi` lines. Reads standard input without --text, "
        "so `fizzbot generate --raw ... | fizzbot decode --latest` works.",
    )
    p.add_argument("--text", help="text to decode (default: standard input)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--speaker-map", help="a speaker_map.json")
    where.add_argument("--model-dir", help="a checkpoint folder (its speaker_map.json)")
    where.add_argument("--latest", action="store_true", help="the newest run's best checkpoint")
    _add_config_args(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser(
        "serve",
        help="serve a checkpoint over HTTP with Ray Serve",
        description="Start the Ray Serve application (POST /v1/generate, /v1/decode, /v1/completions, "
        "/v1/chat/completions; GET /v1/models, /healthz) on a local Ray or the cluster it joins. "
        "serve.model_dir picks the checkpoint (default: the newest run's best).",
    )
    _add_config_args(p, default=None)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "demo",
        help="the whole stack on the embedded default: demo corpus -> prepare -> train -> serve -> ask",
        description="Write the demo corpus, prepare it with Ray Data, train the built-in tiny model with Ray Train "
        "(2 CPU workers), serve the best checkpoint with Ray Serve, ask it for a conversation, print it, shut down.",
    )
    p.add_argument("--corpus", default="data/demo-corpus", help="where the demo corpus goes (default data/demo-corpus)")
    _add_config_args(p, default="configs/demo.yaml")
    p.set_defaults(func=cmd_demo)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come anywhere, also after options (argparse alone takes them only in
    # one run): whatever argparse leaves over must be an override.
    args, extra = parser.parse_known_args(argv)
    strays = [a for a in extra if not _OVERRIDE_RE.match(a)]
    if strays:
        parser.error(f"unrecognized arguments: {' '.join(strays)}")
    if extra:
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        return args.func(args)
    except (ConfigError, InputError, FileNotFoundError, KeyError, ValueError) as exc:
        if isinstance(exc, KeyError):
            exc = exc.args[0] if exc.args else exc
        print(f"fizzbot {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fizzbot {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
