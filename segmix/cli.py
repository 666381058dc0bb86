"""The ``segmix`` command: one subcommand per stage, ``--config file.yaml`` plus ``--set`` overrides.

Every subcommand resolves its config (defaults <- file <- overrides), saves it as ``config.yaml``
in its output folder, and refuses to overwrite finished outputs unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import __version__
from .config import ConfigError, apply_overrides, load_config, save_config
from .runtime import is_main_process

Runner = Callable[..., Any]


class Subcommand:
    """A stage: its defaults, the file whose presence marks a finished run, and its runner
    ``runner(config, output_dir, resume=..., overwrite=...)``."""

    def __init__(self, name: str, help: str, defaults: Dict[str, Any], done_file: str,
                 runner: Runner, resumable: bool = False) -> None:
        self.name, self.help, self.defaults = name, help, defaults
        self.done_file, self.runner, self.resumable = done_file, runner, resumable


def _shuffle_demo() -> Subcommand:
    from . import shuffle_demo

    def runner(config, output_dir, **_):
        return shuffle_demo.run(config, output_dir)

    return Subcommand(
        "shuffle-demo",
        "shuffle tiles of a real IHC image with every mode and draw the result (no data needed)",
        shuffle_demo.DEFAULTS, "summary.json", runner,
    )


def _train_cls() -> Subcommand:
    from . import train_cls

    return Subcommand(
        "train-cls",
        "stage 1: train a classifier on image-level labels with shuffle feedback augmentation",
        train_cls.DEFAULTS, "classifier.pt", train_cls.run, resumable=True,
    )


def subcommands() -> List[Subcommand]:
    return [_shuffle_demo(), _train_cls()]


def build_parser(commands: Sequence[Subcommand]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segmix",
        description="Weakly-supervised segmentation of pathology images from image-level labels.",
    )
    parser.add_argument("--version", action="version", version=f"segmix {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in commands:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        p.add_argument("--config", type=Path, help="YAML config file (defaults are used without)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set shuffle.patch_size=16 (repeatable)")
        p.add_argument("--output-dir", type=Path, help="output folder (overrides output_dir)")
        p.add_argument("--overwrite", action="store_true",
                       help="replace the outputs of an earlier run")
        if command.resumable:
            p.add_argument("--resume", action="store_true",
                           help="continue an interrupted run from its last checkpoint")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    commands = subcommands()
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    command = next(c for c in commands if c.name == args.command)
    try:
        config = apply_overrides(load_config(args.config, command.defaults), args.overrides)
        if args.output_dir is not None:
            config["output_dir"] = str(args.output_dir)
    except ConfigError as error:
        print(f"segmix {command.name}: error: {error}", file=sys.stderr)
        return 2
    output_dir = Path(config["output_dir"])
    resume = bool(getattr(args, "resume", False))
    if resume and args.overwrite:
        print(f"segmix {command.name}: error: --resume and --overwrite exclude each other",
              file=sys.stderr)
        return 2
    if (output_dir / command.done_file).exists() and not args.overwrite:
        print(f"segmix {command.name}: {output_dir / command.done_file} exists: this run is finished."
              " Use --overwrite to replace it or --output-dir for a new folder.", file=sys.stderr)
        return 1
    if is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "config.yaml")
    try:
        command.runner(config, output_dir, resume=resume, overwrite=args.overwrite)
    except (ValueError, OSError) as error:
        print(f"segmix {command.name}: error: {error}", file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
