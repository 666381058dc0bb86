"""``segmix shuffle-demo``: the patch shuffle on a real IHC image that ships with scikit-image.

The 512x512 immunohistochemistry image (``skimage.data.immunohistochemistry``) is cut into tiles;
each tile gets an image-level label (DAB-positive or not, from colour deconvolution) and a DAB mask.
Every shuffle mode is applied to tiles and masks together, inverted, and drawn as a picture, and the
curriculum's ladder for the tile size is printed. No data and no internet needed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List

import cv2
import numpy as np
import torch
from skimage import data as skdata
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu

from ..artifacts import SUMMARY_FILE
from ..config import ConfigError
from ..curriculum import ShuffleCurriculum
from ..data import write_rgb
from ..io import write_json
from ..shuffle import MODES, PatchShuffle, invert_params, patch_grid

__all__ = ["DEFAULTS", "DONE_FILE", "run", "validate"]

DEFAULTS: Dict[str, Any] = {
    "output_dir": "outputs/shuffle-demo",
    "tile_size": 128,
    "seed": 0,
    "positive_fraction": 0.15,
    "shuffle": {"patch_size": 32, "fix_ratio": 0.5, "modes": list(MODES), "group_size": 4},
    "curriculum": {"strategy": "linear", "epochs": 12, "warmup_epochs": 1},
}

DONE_FILE = SUMMARY_FILE
CLASS_NAMES = ("DAB-negative", "DAB-positive")


def validate(config: Dict[str, Any]) -> None:
    """Check every value this stage reads (see :mod:`segmix.stages`)."""
    tile = config["tile_size"]
    if isinstance(tile, bool) or not isinstance(tile, int) or not 16 <= tile <= 512:
        raise ConfigError(f"tile_size must be an integer in [16, 512] (the demo image is 512 px),"
                          f" got {tile!r}")
    shuffle_cfg = config["shuffle"]
    unknown = [mode for mode in shuffle_cfg["modes"] if mode not in MODES]
    if unknown or not shuffle_cfg["modes"]:
        raise ConfigError(f"shuffle.modes must list some of {', '.join(MODES)}, got"
                          f" {shuffle_cfg['modes']!r}")
    curriculum = config["curriculum"]
    try:
        for mode in shuffle_cfg["modes"]:
            PatchShuffle(shuffle_cfg["patch_size"], shuffle_cfg["fix_ratio"], mode,
                         num_classes=len(CLASS_NAMES), group_size=shuffle_cfg["group_size"])
        patch_grid(tile, tile, shuffle_cfg["patch_size"])
        ShuffleCurriculum(tile, curriculum["strategy"], total_epochs=int(curriculum["epochs"]),
                          warmup_epochs=int(curriculum["warmup_epochs"]))
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from error


def make_tiles(tile_size: int, positive_fraction: float):
    """Tiles ``[B, 3, T, T]`` (float in [0, 1]), DAB masks ``[B, T, T]`` and labels ``[B]``."""
    image = skdata.immunohistochemistry()
    side = (min(image.shape[:2]) // tile_size) * tile_size
    if side == 0:
        raise ValueError(f"tile_size {tile_size} is larger than the 512 px demo image")
    image = image[:side, :side]
    dab = rgb2hed(image)[..., 2]
    mask = dab > threshold_otsu(dab)
    per_side = side // tile_size

    def to_tiles(array: np.ndarray) -> np.ndarray:
        shaped = array.reshape(per_side, tile_size, per_side, tile_size, *array.shape[2:])
        return np.swapaxes(shaped, 1, 2).reshape(per_side * per_side, tile_size, tile_size,
                                                 *array.shape[2:])

    tiles = torch.from_numpy(to_tiles(image)).permute(0, 3, 1, 2).float() / 255.0
    masks = torch.from_numpy(to_tiles(mask).astype(np.uint8))
    labels = (masks.float().mean(dim=(1, 2)) > positive_fraction).long()
    return tiles, masks, labels


def _row(tiles: torch.Tensor) -> np.ndarray:
    """Tiles ``[B, 3, T, T]`` in [0, 1] side by side as one uint8 RGB strip with 2 px gaps."""
    images = (tiles.clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).numpy()
    gap = np.full((images.shape[1], 2, 3), 255, np.uint8)
    parts: List[np.ndarray] = []
    for image in images:
        parts.extend([image, gap])
    return np.concatenate(parts[:-1], axis=1)


def _overlay(tiles: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    colour = torch.tensor([1.0, 0.1, 0.1]).view(1, 3, 1, 1)
    alpha = 0.45 * masks.unsqueeze(1).float()
    return tiles * (1 - alpha) + colour * alpha


def draw_mode(tiles, masks, result, restored, title: str) -> np.ndarray:
    """A picture: original, shuffled, shuffled mask overlay, restored by the inverse."""
    rows = [
        ("original", tiles),
        ("shuffled", result.images),
        ("shuffled + mask", _overlay(result.images, result.masks)),
        ("inverted", restored),
    ]
    strips = []
    for name, batch in rows:
        strip = _row(batch)
        label = np.full((22, strip.shape[1], 3), 255, np.uint8)
        cv2.putText(label, name, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        strips.extend([label, strip])
    header = np.full((28, strips[0].shape[1], 3), 255, np.uint8)
    cv2.putText(header, title, (4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
    return np.concatenate([header, *strips], axis=0)


def run(config: Dict[str, Any], output_dir: Path, *, resume: bool = False,
        overwrite: bool = False) -> Dict[str, Any]:
    """Run the demo, write pictures and ``summary.json`` into ``output_dir``; return the summary.
    (It has no checkpoints: everything is computed again.)"""
    validate(config)
    shuffle_cfg, curriculum_cfg = config["shuffle"], config["curriculum"]
    tiles, masks, labels = make_tiles(int(config["tile_size"]), float(config["positive_fraction"]))
    num = min(8, tiles.shape[0])
    print(f"{tiles.shape[0]} tiles of {config['tile_size']} px from skimage's IHC image; "
          f"{int(labels.sum())} labelled {CLASS_NAMES[1]}")
    generator = torch.Generator().manual_seed(int(config["seed"]))
    summary: Dict[str, Any] = {"modes": {}}
    print(f"{'mode':<8} {'moved patches':>13} {'label change':>12} {'exact inverse':>13} {'ms':>6}")
    for mode in shuffle_cfg["modes"]:
        op = PatchShuffle(shuffle_cfg["patch_size"], shuffle_cfg["fix_ratio"], mode,
                          num_classes=len(CLASS_NAMES), group_size=shuffle_cfg["group_size"])
        start = time.perf_counter()
        result = op(tiles, labels, masks, generator=generator)
        elapsed = (time.perf_counter() - start) * 1e3
        restored = invert_params(result.images, result.params)
        exact = bool(torch.equal(restored, tiles))
        moved = (result.params.source != torch.arange(result.params.source.numel()).view_as(
            result.params.source)).float().mean().item()
        one_hot = torch.nn.functional.one_hot(labels, len(CLASS_NAMES)).float()
        label_change = (result.labels - one_hot).abs().sum(dim=1).mean().item() / 2
        print(f"{mode:<8} {moved:>13.2f} {label_change:>12.3f} {str(exact):>13} {elapsed:>6.1f}")
        picture = draw_mode(tiles[:num], masks[:num], result._replace(
            images=result.images[:num], masks=result.masks[:num]), restored[:num],
            f"mode={mode} patch={op.patch_size} fix_ratio={op.fix_ratio}")
        path = output_dir / f"shuffle_{mode}.png"
        write_rgb(path, picture)
        summary["modes"][mode] = {"moved_fraction": moved, "mean_label_change": label_change,
                                  "exact_inverse": exact, "picture": path.name}

    curriculum = ShuffleCurriculum(int(config["tile_size"]), curriculum_cfg["strategy"],
                                   total_epochs=int(curriculum_cfg["epochs"]),
                                   warmup_epochs=int(curriculum_cfg["warmup_epochs"]))
    plan = [curriculum.setting_at(curriculum.planned_level(e)) for e in range(curriculum.total_epochs)]
    print("curriculum plan (epoch: patch size, fix ratio): " + ", ".join(
        f"{e}: {s.patch_size}/{s.fix_ratio:.2f}" for e, s in enumerate(plan)))
    summary["curriculum_plan"] = [
        {"epoch": e, "patch_size": s.patch_size, "fix_ratio": s.fix_ratio} for e, s in enumerate(plan)
    ]
    write_json(output_dir / DONE_FILE, summary)
    print(f"pictures and summary.json written to {output_dir}")
    return summary
