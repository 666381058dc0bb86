"""Datasets with image-level labels (CSV, LUAD-HistoSeg, BCSS-WSSS, class folders), masks, mask
PNGs with their palette, and the synthetic demo dataset."""

from .dataset import (
    DATA_DEFAULTS,
    TileDataset,
    build_transform,
    dataset_classes,
    image_size_of,
    mask_convention,
    model_transform,
    count_masks,
    read_split,
    unique_names,
    unique_stems,
    validate_data,
)
from .images import (
    ImageReadError,
    captioned,
    picture_grid,
    read_label_mask,
    read_mask,
    read_rgb,
    resized,
    write_rgb,
)
from .palette import (
    overlay,
    palette_colors,
    read_mask_png,
    write_mask_png,
)
from .readers import (
    BCSS_CLASSES,
    FORMATS,
    LUAD_CLASSES,
    parse_filename_label,
    read_class_folders,
    read_csv,
    read_filename_labels,
    verify_files,
)
from .samples import DatasetError, Problem, ReadResult, Sample, resolve_problems

__all__ = [
    "DATA_DEFAULTS", "mask_convention", "unique_names", "unique_stems",
    "BCSS_CLASSES", "FORMATS", "LUAD_CLASSES", "DatasetError", "ImageReadError", "Problem",
    "ReadResult", "Sample", "TileDataset", "build_transform", "dataset_classes", "image_size_of",
    "overlay", "palette_colors", "parse_filename_label", "read_class_folders", "read_csv",
    "read_filename_labels", "read_label_mask", "read_mask", "read_mask_png", "read_rgb",
    "read_split", "count_masks", "resolve_problems", "verify_files", "write_mask_png",
    "validate_data", "write_rgb", "resized", "model_transform", "captioned", "picture_grid",
]
