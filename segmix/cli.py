"""The ``segmix`` command: one subcommand per stage, ``--config file.yaml`` plus ``--set`` overrides.

Every subcommand resolves its config (defaults <- file <- overrides), saves it as ``config.yaml``
in its output folder, and refuses to overwrite finished outputs unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence, Tuple

from . import __version__
from .config import ConfigError, apply_overrides, load_config
from .run_folders import OutputDirError, prepare_output_dir


@dataclass(frozen=True)
class Subcommand:
    """A stage, named by its module. The module defines ``DEFAULTS`` (its config), ``DONE_FILE``
    (the output whose presence marks a finished run) and ``run(config, output_dir, *, resume,
    overwrite)``; it is imported only when its subcommand runs, so ``--help`` stays fast."""

    name: str
    help: str
    module: str
    resumable: bool = False

    def load(self) -> ModuleType:
        return importlib.import_module(f"segmix.{self.module}")


SUBCOMMANDS: Tuple[Subcommand, ...] = (
    Subcommand("demo", "the whole pipeline on a synthetic tissue dataset it writes itself (no data,"
               " no internet; a few minutes on a CPU)", "demo"),
    Subcommand("shuffle-demo", "shuffle tiles of a real IHC image with every mode and draw the"
               " result (no data needed)", "shuffle_demo"),
    Subcommand("train-cls", "stage 1: train a classifier on image-level labels with shuffle"
               " feedback augmentation", "train_cls", resumable=True),
    Subcommand("cams", "stage 2: class activation maps of a trained classifier (CAM, Grad-CAM,"
               " Grad-CAM++, LayerCAM; flip, scale and shuffle TTA)", "cams_stage"),
    Subcommand("pseudo-masks", "stage 3: CAMs -> palette PNG pseudo masks (background model,"
               " ignore band, clean-up, threshold sweep)", "pseudo_stage"),
    Subcommand("train-seg", "stage 4: train a segmentation model on the pseudo masks, image and"
               " mask shuffled together", "train_seg", resumable=True),
    Subcommand("predict", "masks for new images of any size with a trained segmentation model"
               " (sliding window, blended logits, flip TTA)", "predict_stage"),
    Subcommand("run", "the whole pipeline in one folder: train-cls -> cams -> pseudo-masks ->"
               " train-seg -> predict -> evaluate; re-run to continue after an interruption",
               "pipeline"),
    Subcommand("evaluate", "score predicted masks against the ground truth of any labelled split"
               " (mIoU, FwIoU, Dice; with and without background)", "evaluate_stage"),
)


def build_parser(commands: Sequence[Subcommand]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segmix",
        description="Weakly-supervised segmentation of pathology images from image-level labels.",
    )
    parser.add_argument("--version", action="version", version=f"segmix {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in commands:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        p.add_argument("--config", type=Path, action="append", default=[],
                       help="YAML config file (defaults are used without); repeat to layer files,"
                       " later ones over earlier ones")
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
    commands = SUBCOMMANDS
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    command = next(c for c in commands if c.name == args.command)
    stage = command.load()
    # One file may hold every stage's settings: keys of the other stages are skipped here.
    foreign = set()
    if args.config:
        foreign = {key for other in commands for key in other.load().DEFAULTS} - set(stage.DEFAULTS)
    try:
        config = stage.DEFAULTS
        for path in args.config:
            config = load_config(path, config, foreign)
        config = apply_overrides(config, args.overrides)
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
    try:
        prepare_output_dir(stage, config, output_dir, overwrite=args.overwrite)
    except OutputDirError as error:
        print(f"segmix {command.name}: {error}", file=sys.stderr)
        return 1
    try:
        stage.run(config, output_dir, resume=resume, overwrite=args.overwrite)
    except (ValueError, OSError) as error:
        print(f"segmix {command.name}: error: {error}", file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
