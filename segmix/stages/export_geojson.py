"""``segmix export-geojson``: class masks as QuPath GeoJSON annotations
(:mod:`segmix.slides.geojson`).

``masks`` is a slide mask (``masks/<slide>.tiff`` of ``segmix predict --set predict.slides=true``),
a folder of them, or a folder of PNG masks with its ``legend.json`` (tiles: ``predict``,
``pseudo-masks``). Each mask becomes ``<stem>.geojson``: one ``MultiPolygon`` annotation per
class with holes, named and coloured as in the legend, in the pixel coordinates of the image
QuPath opens: level 0 of the slide (the slide mask records its scale), or the tile itself.
``summary.json`` counts polygons per mask and marks the run finished; a re-run writes only
missing files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

from tqdm import tqdm

from ..artifacts import SLIDE_MASK_SUFFIXES, SUMMARY_FILE, legend_folder, read_legend
from ..config import ConfigError, check_path
from ..data import read_mask_png
from ..data.readers import image_files
from ..slides.geojson import mask_to_geojson
from ..io import atomic_write_text, write_json
from ..slides.masks import read_mask_pyramid

__all__ = ["DEFAULTS", "DONE_FILE", "run", "validate"]

DONE_FILE = SUMMARY_FILE

DEFAULTS: Dict[str, Any] = {
    "output_dir": "runs/geojson",
    "masks": None,  # a slide mask .tiff, a folder of them, or a folder of PNG masks + legend.json
}


def validate(config: Dict[str, Any]) -> None:
    """Check every value this stage reads (see :mod:`segmix.stages`)."""
    check_path("masks", config["masks"], "a slide mask (.tiff from segmix predict), a folder of"
               " them, or a folder of PNG masks with its legend.json")


def _sources(source: Path) -> List[Path]:
    if source.is_file():
        return [source]
    found = image_files(source, (*SLIDE_MASK_SUFFIXES, ".png"))
    if not found:
        raise ConfigError(f"masks: {source} holds no .tiff or .png masks")
    return found


def _collection(path: Path) -> Tuple[Dict[str, Any], int]:
    """The GeoJSON of one mask file and its polygon count."""
    if path.suffix.lower() in SLIDE_MASK_SUFFIXES:
        try:
            mask, meta = read_mask_pyramid(path)
        except ValueError as error:
            raise ConfigError(str(error)) from error
        classes, colors, scale = meta["classes"], meta["colors"], float(meta.get("slide_scale", 1.0))
    else:
        classes, colors = read_legend(legend_folder(path))
        mask, scale = read_mask_png(path), 1.0
    collection = mask_to_geojson(mask, classes, colors, scale=scale)
    polygons = sum(len(f["geometry"]["coordinates"]) for f in collection["features"])
    return collection, polygons


def run(config: Dict[str, Any], output_dir: Path, *, resume: bool = False,
        overwrite: bool = False) -> Dict[str, Any]:
    """Write ``<stem>.geojson`` for every mask; returns the summary written to ``summary.json``."""
    validate(config)
    counts: Dict[str, Any] = {}
    for path in tqdm(_sources(Path(config["masks"])), desc="GeoJSON", unit="mask"):
        target = output_dir / f"{path.stem}.geojson"
        if target.exists() and not overwrite:
            counts[path.stem] = "already done"
            continue
        collection, polygons = _collection(path)
        atomic_write_text(target, json.dumps(collection))
        counts[path.stem] = polygons
    summary = {"masks": str(config["masks"]), "polygons": counts}
    write_json(output_dir / DONE_FILE, summary)
    print(f"wrote {len(counts)} GeoJSON file(s) to {output_dir} (QuPath: File > Import objects)",
          flush=True)
    return summary
