"""The ``segmix`` command: one subcommand per stage, ``--config file.yaml`` plus ``--set`` overrides;
a thin layer over :mod:`segmix.api`.

Every subcommand resolves its config (defaults <- files <- overrides), validates all of it, saves
it as ``config.yaml`` in its output folder, and refuses to overwrite finished outputs unless
``--overwrite`` is given. User errors (:class:`segmix.errors.SegmixError`, and files the system
cannot read or write) are printed as one line: exit status 2 when the config is refused before
anything runs, 1 when the run fails; anything else is a bug and keeps its traceback. Ctrl-C ends
with one line that says how to go on (exit status 130).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import __version__
from .errors import SegmixError
from .stages import STAGES, Stage, get_stage

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segmix",
        description="Weakly-supervised segmentation of pathology images from image-level labels.",
    )
    parser.add_argument("--version", action="version", version=f"segmix {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for stage in STAGES:
        p = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        p.add_argument("--config", type=Path, action="append", default=[],
                       help="YAML config file (defaults are used without); repeat to layer files,"
                       " later ones over earlier ones")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help=f"override a config key, e.g. --set {stage.example} (repeatable;"
                       " values are YAML)")
        p.add_argument("--output-dir", type=Path, help="output folder (overrides output_dir)")
        p.add_argument("--overwrite", action="store_true",
                       help="replace the outputs of an earlier run")
        if stage.resumable:
            p.add_argument("--resume", action="store_true",
                           help="continue an interrupted run from its last checkpoint")
        for flag, key, text, kind in stage.flags:
            p.add_argument(flag, dest=f"flag:{key}", metavar=flag[2:].upper(), type=kind,
                           help=f"{text} (sets {key})")
    return parser


def _fail(stage: Stage, error: Exception, status: int) -> int:
    print(f"segmix {stage.name}: error: {error}", file=sys.stderr)
    return status


def _how_to_continue(stage: Stage, argv: Sequence[str]) -> str:
    command = " ".join(["segmix", *(arg for arg in argv if arg != "--overwrite")])
    if stage.resumable:
        return (f"interrupted; finished epochs are kept. To continue: {command} --resume"
                if "--resume" not in argv else f"interrupted; to continue: {command}")
    return f"interrupted; finished outputs are kept. To continue: {command}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from .api import resolve_config, run_resolved  # imports torch: not for --help

    stage = get_stage(args.command)
    resume = bool(getattr(args, "resume", False))
    if resume and args.overwrite:
        return _fail(stage, SegmixError("--resume and --overwrite exclude each other"), 2)
    try:
        flags = {key: getattr(args, f"flag:{key}") for _, key, _, _ in stage.flags
                 if getattr(args, f"flag:{key}") is not None}
        config = resolve_config(stage, args.config, output_dir=args.output_dir,
                                overrides=args.overrides, **flags)
    except (SegmixError, OSError) as error:  # refused before anything ran, as a bad command line
        return _fail(stage, error, 2)
    try:
        run_resolved(stage, config, overwrite=args.overwrite, resume=resume)
    except (SegmixError, OSError) as error:  # OSError: a file missing, denied, a full disk...
        return _fail(stage, error, 1)
    except KeyboardInterrupt:
        print(f"\nsegmix {stage.name}: {_how_to_continue(stage, argv)}", file=sys.stderr)
        return 130
    return 0

if __name__ == "__main__":
    sys.exit(main())
