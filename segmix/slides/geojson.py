"""Class masks as QuPath GeoJSON: one ``MultiPolygon`` annotation per class, polygons with holes.

Vertices are pixel centres of the region's boundary pixels (``x + 0.5``, ``y + 0.5``), multiplied
by ``scale`` to reach the coordinates of the image QuPath opens (level 0 of the slide), so a mask
predicted at a coarser resolution lands on the slide. ``classification`` carries the class name
and colour QuPath shows. :func:`geojson_to_mask` rasterises a collection back.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import cv2
import numpy as np

__all__ = ["mask_to_geojson", "geojson_to_mask"]


def _rings(binary: np.ndarray, scale: float) -> List[List[List[List[float]]]]:
    """Polygons ``[outer, hole, ...]`` of a binary mask, each ring a closed list of ``[x, y]``."""
    contours, hierarchy = cv2.findContours(binary.astype(np.uint8), cv2.RETR_CCOMP,
                                           cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []

    def ring(contour: np.ndarray) -> List[List[float]]:
        points = (contour[:, 0, :].astype(np.float64) + 0.5) * scale
        points = np.vstack([points, points[:1]])  # GeoJSON rings are closed
        return np.round(points, 3).tolist()

    polygons: Dict[int, List] = {}
    for index, (_, _, _, parent) in enumerate(hierarchy[0]):
        if parent < 0:
            polygons.setdefault(index, []).insert(0, ring(contours[index]))
        else:
            polygons.setdefault(parent, []).append(ring(contours[index]))
    return [rings for rings in polygons.values() if rings]


def mask_to_geojson(mask: np.ndarray, classes: Sequence[str], colors: Sequence[Sequence[int]],
                    *, scale: float = 1.0) -> Dict[str, Any]:
    """A GeoJSON ``FeatureCollection`` of the classes ``1..K`` of ``mask`` (0 background and 255
    ignore are left out); ``colors[k]`` is class ``k``'s RGB (``colors[0]`` the background's)."""
    features = []
    for index, name in enumerate(classes, start=1):
        polygons = _rings(mask == index, scale)
        if not polygons:
            continue
        features.append({
            "type": "Feature",
            "geometry": {"type": "MultiPolygon", "coordinates": polygons},
            "properties": {"objectType": "annotation",
                           "classification": {"name": name, "color": list(colors[index])}},
        })
    return {"type": "FeatureCollection", "features": features}


def geojson_to_mask(collection: Dict[str, Any], shape: Tuple[int, int], classes: Sequence[str],
                    *, scale: float = 1.0) -> np.ndarray:
    """Rasterise a collection written by :func:`mask_to_geojson` back to a class-index mask of
    ``shape`` (features of classes not in ``classes`` are an error naming them)."""
    mask = np.zeros(shape, dtype=np.uint8)
    for feature in collection["features"]:
        name = feature["properties"]["classification"]["name"]
        if name not in classes:
            raise ValueError(f"a feature of class {name!r}, not one of {list(classes)}")
        region = np.zeros(shape, dtype=np.uint8)
        for polygon in feature["geometry"]["coordinates"]:
            rings = [np.rint(np.asarray(r, dtype=np.float64) / scale - 0.5).astype(np.int32)
                     for r in polygon]
            cv2.fillPoly(region, [rings[0]], 1)
            for hole in rings[1:]:  # a hole ring runs through the region's own pixels
                cv2.fillPoly(region, [hole], 0)
                cv2.polylines(region, [hole], True, 1)
        mask[region > 0] = classes.index(name) + 1
    return mask
