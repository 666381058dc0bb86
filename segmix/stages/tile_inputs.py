"""What the pseudo-mask stage reads for one tile: its image, its CAMs at its own size, its
foreground map (``segmix localise``) and its ground truth, and the masks they make
(:func:`pseudo_masks.cams_to_masks`). Shared by the stage, its sweep and its quality check."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from pseudo_masks import PseudoMaskConfig, cams_to_masks, threshold_scores

from ..artifacts import CamRecord, read_cam_file, read_foreground_map
from ..config import ConfigError
from ..data import mask_convention, read_label_mask, read_rgb

__all__ = ["tile_cams", "tile_inputs", "tile_masks", "tile_scores", "tile_truth"]


def tile_cams(record: CamRecord, size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """A tile's CAMs ``[1, K, H, W]`` resized to its own size, and its labels ``[1, K]``."""
    arrays = read_cam_file(record.cam_path)
    cams = torch.from_numpy(arrays["cams"].astype(np.float32))[None]
    if tuple(cams.shape[-2:]) != size:
        cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
    return cams, torch.from_numpy(arrays["labels"].astype(np.float32))[None]


def tile_truth(record: CamRecord, data: Dict[str, Any], labels: torch.Tensor,
           num_classes: int) -> Optional[np.ndarray]:
    if record.mask is None:
        return None
    present = tuple(int(k) for k in torch.nonzero(labels[0]).flatten())
    return read_label_mask(record.mask, present, num_classes, mask_convention(data))


def tile_inputs(record: CamRecord, localiser_dir: Optional[Path]) -> Dict[str, Any]:
    """The tile's RGB array (``rgb``) and the arguments of :func:`cams_to_masks` at its size:
    ``cams``, ``labels``, ``images`` and ``foreground`` (``None`` without ``localiser_dir``)."""
    image = read_rgb(record.image)
    cams, labels = tile_cams(record, image.shape[:2])
    foreground = None
    if localiser_dir is not None:
        values = read_foreground_map(localiser_dir, record.split, record.name)
        if values.shape != image.shape[:2]:
            raise ConfigError(f"the foreground map of {record.image} in {localiser_dir} is"
                              f" {values.shape[1]}x{values.shape[0]} px, the tile"
                              f" {image.shape[1]}x{image.shape[0]}: run `segmix localise` again")
        foreground = torch.from_numpy(values)[None]
    return {"rgb": image, "cams": cams, "labels": labels, "foreground": foreground,
            "images": torch.from_numpy(image).permute(2, 0, 1)[None]}


def tile_masks(inputs: Dict[str, Any], settings: PseudoMaskConfig) -> torch.Tensor:
    return cams_to_masks(inputs["cams"], inputs["labels"], settings, images=inputs["images"],
                         foreground=inputs["foreground"])[0]


def tile_scores(inputs: Dict[str, Any],
                settings: PseudoMaskConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """The class score the threshold cuts and the tissue it is read in
    (:func:`pseudo_masks.threshold_scores`), from :func:`tile_inputs`."""
    return threshold_scores(inputs["cams"], inputs["labels"], settings, images=inputs["images"],
                            foreground=inputs["foreground"])
