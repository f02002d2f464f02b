"""The `fizzbot` console script: one subcommand per stage, each a thin call into the library.

    fizzbot demo-data --output data/demo
    fizzbot prepare --input data/demo --output data/prepared
    fizzbot train --config configs/train_cpu.yaml training.max_steps=100
    fizzbot generate --latest --speaker alice --content "hello everyone"
    fizzbot serve --config configs/serve.yaml
"""

from __future__ import annotations

import argparse
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
    from fizzbot.artifacts.loading import chat_rules
    from fizzbot.chat.conversation import decode, encode_conversation, format_lines, speaker_to_force, tokens_to_forbid
    from fizzbot.chat.render import split_messages
    from fizzbot.infer.engine import Request, SamplingParams, engine_from_checkpoint

    model_dir = _model_dir(args, cfg)
    engine = engine_from_checkpoint(
        model_dir,
        device=g.device,
        tokenizer_model=args.tokenizer_model or g.tokenizer_model,
        max_prompt_tokens=g.max_prompt_tokens,
        max_batch_size=g.max_batch_size,
        static_cache=g.compile,
        compile=g.compile,
        max_cache_len=g.max_cache_len,
    )
    smap = engine.speaker_map
    # The checkpoint's own context rules (what it was trained on) and generate.unknown_speakers.
    rules = chat_rules(model_dir, g.unknown_speakers)
    force, forced_guest = speaker_to_force(args.next_speaker, smap, rules) if args.next_speaker else (None, None)
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens or g.max_new_tokens,
        temperature=g.temperature if args.temperature is None else args.temperature,
        top_p=args.top_p or g.top_p,
        top_k=g.top_k,
        repetition_penalty=args.repetition_penalty or g.repetition_penalty,
        turns=args.turns or g.turns,
        eos_stop=g.eos_stop and not args.no_eos_stop,
        seed=g.seed if args.seed is None else args.seed,
        force_speaker=force,
        forbid_speakers=tokens_to_forbid(args.forbid or g.forbid_speakers, smap, rules),
    )
    messages: list[dict] = []
    if args.context_file:
        context = _read_context(args.context_file)
        if isinstance(context, str):  # raw text: its messages, so that the same budget applies
            context = [{"speaker": token, "content": content} for token, content in split_messages(context)]
        messages.extend(context)
    if args.content is not None:
        if not args.speaker:
            raise InputError("--content needs --speaker (who says it)", path="--speaker")
        messages.append({"username": args.speaker, "content": args.content})

    def reply() -> None:
        """Continue `messages`, print the answer, and add it to `messages` (the next turn's context)."""
        prompt = encode_conversation(messages, smap, rules)
        (result,) = engine.generate([Request(prompt.text, params)])
        answer = decode(result.text, smap, prompt.speaker_names(smap, forced_guest), forced_guest)
        print(result.text if args.raw else format_lines(answer), flush=True)
        messages.extend({"speaker": m.token, "content": m.content} for m in answer)

    if not args.interactive:
        reply()
        return 0
    if not args.speaker:
        raise InputError("--interactive needs --speaker: the user you type as", path="--speaker")
    you = args.speaker.strip()
    encode_conversation([{"username": you, "content": ""}], smap, rules)  # an unknown name under `reject` stops here
    print(f"fizzbot chat: you are {you}; model {model_dir}. Empty line lets the channel talk; /quit ends.", file=sys.stderr)
    if messages:
        reply()
    while True:
        if sys.stdin.isatty():
            try:
                line = input(f"{you}> ")
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
            messages.append({"username": you, "content": line})
        reply()
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

    model_dir = resolve_model_dir(cfg)
    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"model_dir": model_dir})})
    url = run_server(cfg)
    wait_healthy(url)
    print(f"fizzbot serving {model_dir}\n  {url}/v1/generate  (OpenAI-compatible: {url}/v1)", flush=True)
    if not cfg.serve.blocking:
        return 0
    try:
        while True:
            _time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down", file=sys.stderr)
        serve.shutdown()
    return 0


# --- the bot ---------------------------------------------------------------------------------------


def cmd_bot(args: argparse.Namespace) -> int:
    cfg = _config(args)
    import logging

    from fizzbot.bot.core import main_loop

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    channels = ", ".join(cfg.bot.channels) or "(none)"
    where = f"{cfg.bot.irc.host}:{cfg.bot.irc.port}" if cfg.bot.platform == "irc" else "Discord"
    print(f"fizzbot bot: {cfg.bot.nick} on {where}, channels {channels}, asking {cfg.bot.endpoint}", file=sys.stderr, flush=True)
    return main_loop(cfg.bot)


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
        "write OUTPUT/train.jsonl, val.jsonl, speaker_map.json, stats.json and report.png, on Ray Data. "
        "Every message is a target once (conversation openers with an empty context; data.openers=false: not). "
        "data.speaker_map=PATH (an earlier speaker_map.json, or a prepared or checkpoint folder) keeps every "
        "speaker's token and appends new ones; data.exclude_speakers=[...] names people who opted out: never "
        "targets, never a speaker token, their messages anonymous context or dropped (data.exclude_mode).",
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
        "Prints decoded `username: message` lines (--raw: speaker tokens). The context is trimmed by the checkpoint's "
        "own data.max_context_messages and data.max_context_chars (as its training windows were), then to "
        "generate.max_prompt_tokens; people in its data.exclude_speakers are anonymous or left out, never spoken as.",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--latest", action="store_true", help="the newest run's best checkpoint (under run.dir)")
    where.add_argument("--model-dir", help="a checkpoint folder")
    p.add_argument("--speaker", help="username or token of the prompt message's author (and yours with --interactive); "
                   "a name the model has never seen takes the guest token (generate.unknown_speakers=reject refuses it)")
    p.add_argument("--content", help="the prompt message")
    p.add_argument("--context-file", help="earlier messages: JSON list or JSON lines of {username, content}, or raw text")
    p.add_argument("--turns", type=int, help="messages to generate (default generate.turns)")
    p.add_argument("--max-new-tokens", type=int, help="token budget per message (default generate.max_new_tokens)")
    p.add_argument("--temperature", type=float, help="0 is greedy (default generate.temperature)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (default generate.top_p)")
    p.add_argument("--repetition-penalty", type=float, help="(default generate.repetition_penalty)")
    p.add_argument("--no-eos-stop", action="store_true", help="do not stop at the model's end-of-sequence token")
    p.add_argument("--seed", type=int, help="sampling seed: same seed, same output")
    p.add_argument("--next-speaker", help="force who speaks first (username or token); an unknown name speaks with the "
                   "guest token and its message carries that name")
    p.add_argument("--forbid", action="append", help="never speak as this user (repeatable); an unknown name forbids the "
                   "guest token")
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
        "serve.model_dir picks the checkpoint (default: the newest run's best). Names the model has never seen "
        "take the guest token (serve.unknown_speakers=reject answers 400 instead); OpenAI messages without a "
        "name take serve.default_username (user) or serve.assistant_name (assistant), else the guest token.",
    )
    _add_config_args(p, default=None)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "bot",
        help="take part in a chat channel (IRC or Discord) through the Serve endpoint",
        description="Join the channels of bot.channels on bot.platform (irc: bot.irc.host/port/tls; discord: a bot "
        "token from bot.discord.token_env), answer when addressed by bot.nick (and, with bot.chime_in_rate, now and "
        "then when a channel is active) by asking bot.endpoint's /v1/generate, and post the answer as "
        "'[persona] text'. An owner (bot.owners) stops it with bot.stop_command. With bot.log_dir set it writes "
        "what people say as seed-format JSON lines for `fizzbot update` (off by default).",
    )
    _add_config_args(p, default=None)
    p.set_defaults(func=cmd_bot)

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
    return report_errors(f"fizzbot {args.command}", lambda: args.func(args))


def report_errors(command: str, call) -> int:
    """Run `call()`; what a user can fix (bad input or config, a missing file, a full disk) is one line
    on stderr and exit status 2, not a traceback. Used by the CLI and by the Ray job entrypoints."""
    try:
        return call()
    except (ConfigError, InputError, FileNotFoundError, KeyError, ValueError) as exc:
        if isinstance(exc, KeyError):
            exc = exc.args[0] if exc.args else exc
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        full = disk_full(exc)
        if full is None:
            raise
        print(f"{command}: error: {full}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130


def disk_full(exc: OSError) -> str | None:
    """The one-line story of a write that ran out of room (no space, quota, file-size limit), else None.

    shutil.copytree gathers its failures into one shutil.Error of (source, destination, reason) rows.
    """
    import errno
    import shutil

    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        _, destination, reason = exc.args[0][0]
        for words in ("No space left on device", "Disk quota exceeded", "File too large"):
            if words in str(reason):
                return f"could not write {destination}: {words}"
        return None
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"could not write {exc.filename or 'a file'}: {exc.strerror}"
    return None


if __name__ == "__main__":
    sys.exit(main())
