"""Datasets with image-level labels (CSV, LUAD-HistoSeg, BCSS-WSSS, class folders) and masks."""

from .dataset import (
    DATA_DEFAULTS,
    TileDataset,
    build_transform,
    dataset_classes,
    image_size_of,
    mask_convention,
    read_split,
    unique_names,
    unique_stems,
)
from .images import IGNORE_INDEX, MaskConvention, decode_mask, read_mask, read_rgb, write_rgb
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
    "BCSS_CLASSES", "FORMATS", "IGNORE_INDEX", "LUAD_CLASSES", "DatasetError", "MaskConvention",
    "Problem", "ReadResult", "Sample", "TileDataset", "build_transform", "dataset_classes",
    "decode_mask", "image_size_of", "parse_filename_label", "read_class_folders", "read_csv",
    "read_filename_labels", "read_mask", "read_rgb", "read_split", "resolve_problems",
    "verify_files", "write_rgb",
]
