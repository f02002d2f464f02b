"""Shared by the job entrypoints: argument parsing and making the uploaded working dir importable."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse(description: str, argv: list[str] | None = None, extra=None):
    # `ray job submit --working-dir .` runs `python jobs/<stage>.py` with jobs/ as sys.path[0]; the
    # package sits one level up, in the uploaded working dir.
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="a fizzbot YAML config")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    from fizzbot.config import load_config

    return args, load_config(args.config, args.overrides)
