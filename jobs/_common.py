"""Shared by the job entrypoints: making the uploaded working dir importable, argument parsing, and
reporting a failure as one line.

Relative paths in a job (data.inputs, data.output, run.dir, ...) resolve in the job's working
directory: Ray's copy of what `--working-dir` uploaded (git-ignored files such as data/ and runs/
are left out), on the node that runs the job, which Ray removes when it no longer needs it. Give
absolute paths (shared storage on a multi-node cluster) for inputs that are not in the repository
and for outputs to keep.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# `ray job submit --working-dir .` runs `python jobs/<stage>.py` with jobs/ as sys.path[0]; the
# package sits one level up, in the uploaded working dir.
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse(description: str, argv: list[str] | None = None, extra=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="a fizzbot YAML config")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    from fizzbot.config import load_config

    print(f"[job] working directory {os.getcwd()} (relative paths resolve here)", file=sys.stderr, flush=True)
    return args, load_config(args.config, args.overrides)


def run_job(main) -> int:
    """A job's `main()` with the CLI's error reporting: what a user can fix is one line, not a traceback."""
    from fizzbot.cli import report_errors

    return report_errors(f"jobs/{Path(sys.argv[0]).name}", main)
