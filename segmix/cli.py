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

Runner = Callable[[Dict[str, Any], Path], Any]


class Subcommand:
    """A stage: its defaults, the file whose presence marks a finished run, and its runner."""

    def __init__(self, name: str, help: str, defaults: Dict[str, Any], done_file: str,
                 runner: Runner) -> None:
        self.name, self.help, self.defaults = name, help, defaults
        self.done_file, self.runner = done_file, runner


def _shuffle_demo() -> Subcommand:
    from . import shuffle_demo

    return Subcommand(
        "shuffle-demo",
        "shuffle tiles of a real IHC image with every mode and draw the result (no data needed)",
        shuffle_demo.DEFAULTS, "summary.json", shuffle_demo.run,
    )


def subcommands() -> List[Subcommand]:
    return [_shuffle_demo()]


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
                       help="replace the outputs of a finished earlier run")
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
    if (output_dir / command.done_file).exists() and not args.overwrite:
        print(f"segmix {command.name}: {output_dir / command.done_file} exists: this run is finished."
              " Use --overwrite to replace it or --output-dir for a new folder.", file=sys.stderr)
        return 1
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, output_dir / "config.yaml")
    try:
        command.runner(config, output_dir)
    except (ValueError, OSError) as error:
        print(f"segmix {command.name}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
