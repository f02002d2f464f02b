"""The `fizzbot` console script: one subcommand per stage, each a thin call into the library.

    fizzbot demo-data --output data/demo
    fizzbot prepare --input data/demo --output data/prepared
    fizzbot train --config configs/train_cpu.yaml training.max_steps=100
    fizzbot generate --latest --speaker alice --content "hello everyone"
    fizzbot eval --latest
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


def _add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--latest", action="store_true", help="the newest run's best complete checkpoint (under run.dir, a folder or a URI)")
    where.add_argument("--model-dir", help="a checkpoint folder or URI")


def _add_config_args(parser: argparse.ArgumentParser, default: str | None = None, describe_default: str | None = None) -> None:
    shown = describe_default or default or "built-in defaults"
    parser.add_argument("--config", default=default, help=f"YAML config file (default: {shown})")
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
    cfg = _config(args, [f"run.resume={args.resume}"] if args.resume else None)
    from fizzbot.train.trainer import train

    result = train(cfg, use_ray=not args.no_ray)
    ev = result.metrics
    summary = ""
    if ev:
        from fizzbot.eval.measures import summary_line

        summary = f"  {summary_line(ev)}\n"
    print(
        f"trained to step {result.final_step} in {result.seconds:.0f}s\n{summary}"
        f"  run: {result.run_dir}\n  best checkpoint: {result.best_checkpoint}"
    )
    return 0


# --- generation and decoding -------------------------------------------------------------------------


def _model_dir(args: argparse.Namespace, cfg: FizzbotConfig) -> Path:
    """--model-dir or --latest (under run.dir), as a local folder: a URI is fetched into the cache."""
    from fizzbot.artifacts.checkpoint import fetch_checkpoint, find_latest

    where = args.model_dir if getattr(args, "model_dir", None) else find_latest(cfg.run.dir)
    return fetch_checkpoint(where)


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
        compile=g.compile,
        max_cache_len=g.max_cache_len,
    )
    smap = engine.speaker_map
    # The checkpoint's own context rules (what it was trained on) and generate.unknown_speakers.
    rules = chat_rules(model_dir, g.unknown_speakers)
    force, forced_guest = speaker_to_force(args.next_speaker, smap, rules) if args.next_speaker else (None, None)
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens or g.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
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

    turn = 0

    def reply() -> None:
        """Continue `messages`, print the answer, and add it to `messages` (the next turn's context)."""
        # Each turn draws with the next seed: a fixed seed makes the session reproducible, not every
        # answer the same draw (two different messages once got the identical reply).
        nonlocal turn
        seed = None if params.seed is None else params.seed + turn
        turn += 1
        prompt = encode_conversation(messages, smap, rules)
        (result,) = engine.generate([Request(prompt.text, dataclasses.replace(params, seed=seed))])
        answer = decode(result.text, smap, prompt.speaker_names(smap, forced_guest), forced_guest)
        print(result.text if args.raw else format_lines(answer), flush=True)
        if len(answer) < params.turns and result.finish_reason in ("eos", "length"):
            why = ("the model wrote its end-of-sequence token (--no-eos-stop goes on past it)" if result.finish_reason == "eos"
                   else "the context window is full")
            print(f"fizzbot generate: {len(answer)} of {params.turns} messages: {why}", file=sys.stderr, flush=True)
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


# --- evaluation ------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    from fizzbot.eval.run import eval_config, evaluate_checkpoint

    model_dir = _model_dir(args, _config(args))
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    cfg = eval_config(model_dir, args.config, list(args.overrides), data=args.data)
    outcome = evaluate_checkpoint(model_dir, cfg, output=args.output)
    from fizzbot.eval.measures import summary_line

    print(f"{summary_line(outcome.doc['figures'])}")
    style = outcome.doc.get("style")
    if style:
        print(f"style: generated messages attributed to their speaker {style['generated_acc']:.3f}, "
              f"real held-out {style['real_acc']:.3f} (chance {style['chance']:.3f})")
    for goal in outcome.doc["goals"]:
        met = {True: "met", False: "not met", None: "n/a"}[goal["met"]]
        value = "n/a" if goal["value"] is None else f"{goal['value']:.3f}"
        target = "n/a" if goal["target"] is None else f"{goal['target']:.3f}"
        print(f"  goal {goal['goal']}: {value} ({goal['rule']}: {target}) {met}")
    print(f"report: {outcome.report}\n  eval.json and the pictures beside it")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from fizzbot.artifacts.checkpoint import find_latest
    from fizzbot.update import run_update

    where = args.model_dir if args.model_dir else find_latest(cfg.run.dir)
    result = run_update(cfg, where, args.input or [], list(args.overrides), use_ray=not args.no_ray)
    report = result.report
    print(f"update of {result.old_checkpoint}")
    data = report["data"]
    print(f"  {data['new_train']:,} new training and {data['new_val']:,} new validation examples "
          f"({data['duplicates_skipped']:,} already seen); {data['replayed']:,} old rows replayed")
    for name, figures in report["validation_loss"].items():
        old, new = (f"{figures[k]:.4f}" if figures[k] is not None else "n/a" for k in ("old", "new"))
        print(f"  validation loss on the {name.replace('_', ' ')}: old {old}, new {new}")
    verdict = "promoted" if result.promoted else "not promoted"
    print(f"  {verdict}: {report['reason']}")
    if report.get("serve"):
        print(f"  serving: {report['serve']}")
    print(f"  new checkpoint: {result.new_checkpoint}\n  decision: {result.run_dir / 'fizzbot_update.json'}")
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
        description="Read chat exports (seed JSON, DiscordChatExporter JSON/CSV, Slack, Telegram, IRC logs of the "
        "common clients, WhatsApp, Matrix/Element; docs/FORMATS.md) and write OUTPUT/train.jsonl, val.jsonl, "
        "speaker_map.json, stats.json and report.png, on Ray Data. OUTPUT must be a new or empty folder, or one "
        "that prepare wrote before (it is replaced whole); it may not be or hold an input. "
        "Every message is a target once (conversation openers with an empty context; data.openers=false: not). "
        "data.speaker_map=PATH (an earlier speaker_map.json, or a prepared or checkpoint folder) keeps every "
        "speaker's token and appends new ones; data.exclude_speakers=[...] names people who opted out: never "
        "targets, never a speaker token, their messages anonymous context or dropped (data.exclude_mode).",
    )
    p.add_argument("--input", action="append", help="an export file or folder (repeatable); default data.inputs")
    p.add_argument("--output", help="output folder (new, empty, or written by prepare before); default data.output")
    p.add_argument(
        "--format", help="export format (auto, seed, discord, discord_csv, slack, telegram, irc, whatsapp, matrix)"
    )
    p.add_argument("--no-ray", action="store_true", help="run the same stages in this one process (debugging)")
    _add_config_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "train",
        help="fine-tune on prepared data with Ray Train (LoRA, QLoRA, full)",
        description="Train on data.path with Ray Train's TorchTrainer; writes run.dir/run.name/<timestamp>/ (a folder "
        "or a URI such as s3://bucket/runs) with config, metrics.jsonl, TensorBoard events, loss_curves.png and "
        "checkpoint-<step>/ folders. The same command resumes the newest unfinished run of run.name when its "
        "training settings and data are the same (--resume).",
    )
    p.add_argument("--no-ray", action="store_true", help="train in this one process, without Ray (debugging)")
    p.add_argument(
        "--resume", choices=["auto", "force", "never"],
        help="auto: resume the newest unfinished run when its settings and data match (else a new run, saying "
        "why); force: resume it anyway; never: a new run (default run.resume, auto)",
    )
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
    _add_checkpoint_args(p)
    p.add_argument("--speaker", help="username or token of the prompt message's author (and yours with --interactive); "
                   "a name the model has never seen takes the guest token (generate.unknown_speakers=reject refuses it)")
    p.add_argument("--content", help="the prompt message")
    p.add_argument("--context-file", help="earlier messages: JSON list or JSON lines of {username, content}, or raw text")
    p.add_argument("--turns", type=int, help="messages to generate (default generate.turns)")
    p.add_argument("--max-new-tokens", type=int, help="token budget per message (default generate.max_new_tokens)")
    p.add_argument("--min-new-tokens", type=int, default=0, help="no message ends before this many tokens (default 0)")
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
    where.add_argument("--model-dir", help="a checkpoint folder or URI (its speaker_map.json)")
    where.add_argument("--latest", action="store_true", help="the newest run's best checkpoint")
    _add_config_args(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser(
        "eval",
        help="measure whether a checkpoint learned its channel; write eval/report.html and eval.json",
        description="Score a checkpoint on its validation rows: the target loss against unigram and bigram "
        "baselines, the context gain (the loss with the context removed minus the loss with it), who speaks next "
        "(accuracy and macro-F1 over the named speakers against the majority and turn-taking baselines, the "
        "long-tail token apart), and style (a character n-gram classifier's attribution of generated messages "
        "against real ones). Writes MODEL_DIR/eval/ beside the checkpoint's files: report.html, its PNGs and eval.json. "
        "The config is the checkpoint's own (fizzbot.yaml) unless --config is given; eval.* keys set the sizes.",
    )
    _add_checkpoint_args(p)
    p.add_argument("--data", help="prepared data to evaluate on (default: the data.path the checkpoint was trained on)")
    p.add_argument("--output", help="where to write the report (default: MODEL_DIR/eval)")
    _add_config_args(p, describe_default="the checkpoint's own fizzbot.yaml; with --latest, run.dir from the built-in defaults")
    p.set_defaults(func=cmd_eval)

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
        "update",
        help="continue a trained model on a channel's new messages; promote it if it is better",
        description="Prepare the new exports with the checkpoint's rules and speaker map (new people appended), skip "
        "examples it was trained on, mix in update.replay_share of its old rows, train a new run from its weights "
        "(update.max_steps), score old and new on the new and the old validation rows, and promote the new one if "
        "it is better on the new and not worse than update.tolerance on the old (update.serve_app: point that Serve "
        "application at it). The decision goes to the new run's fizzbot_update.json; --latest passes over an "
        "unpromoted run. Exits 0 whether or not it promotes.",
    )
    _add_checkpoint_args(p)
    p.add_argument("--input", action="append", help="a new export file or folder (repeatable)")
    p.add_argument("--no-ray", action="store_true", help="prepare and train in this one process")
    _add_config_args(p)
    p.set_defaults(func=cmd_update)

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
