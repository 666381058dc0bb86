"""Whole-slide prediction and tiling on slides made from real tiles: throughput and peak memory
against slide size.

Writes square pyramidal TIFF slides (``--sizes``, level-0 px at ``--slide-mpp``) as mosaics of
real tiles (``--tiles``, e.g. EBHI-Seg) inside an ellipse of tissue on glass, tile by tile (the
writer holds one tile row). Then, each in a fresh process so its peak RSS is its own:
``segmix predict --set predict.slides=true`` with ``--model`` at the model's mpp, and ``segmix
tile``. The floor is the RSS of a process that loaded the model and read one block. Prints a table.

    python benchmarks/slide_predict.py --tiles ../shared/data/ebhi-seg/images \\
        --model runs/demo/segmenter/model --model-mpp 2.0 --sizes 10000 20000 40000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TILE = 256


def write_mosaic_slide(path: Path, size: int, tiles: list, mpp: float) -> None:
    """A ``size`` x ``size`` slide: real tiles inside an ellipse, glass outside; levels halve
    until one is under 1,024 px, as scanners write them."""
    import tifffile

    bank = [np.asarray(t) for t in tiles]
    side = bank[0].shape[0]

    def level_tiles(scale: int):
        width = -(-size // scale)
        cell = side // scale
        small = [t[::scale, ::scale][:cell, :cell] for t in bank]
        yy, xx = np.mgrid[:TILE, :TILE]
        for top in range(0, width, TILE):
            for left in range(0, width, TILE):
                out = np.full((TILE, TILE, 3), 242, np.uint8)
                ys, xs = top + yy, left + xx
                index = ((ys // cell) * 7919 + (xs // cell) * 104729) % len(small)
                inside = ((xs / width - 0.5) / 0.45) ** 2 + ((ys / width - 0.5) / 0.35) ** 2 < 1
                for k in np.unique(index[inside]):
                    pick = inside & (index == k)
                    out[pick] = small[k][ys[pick] % cell, xs[pick] % cell]
                yield out

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        levels = max(1, int(np.ceil(np.log2(size / 1024))) + 1)
        for level in range(levels):
            scale = 2 ** level
            width = -(-size // scale)
            tif.write(level_tiles(scale), shape=(width, width, 3), dtype=np.uint8,
                      tile=(TILE, TILE), photometric="rgb", compression="zlib",
                      compressionargs={"level": 1}, subfiletype=1 if level else 0,
                      resolution=(1e4 / (mpp * scale),) * 2, resolutionunit="CENTIMETER")


def child(code: str) -> dict:
    """Run ``code`` in a fresh Python; it prints a JSON line last; adds the process's peak RSS."""
    wrapped = code + "\nimport resource, json as _j\nprint(_j.dumps({**RESULT, 'peak_rss_mb':" \
                     " resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
    output = subprocess.run([sys.executable, "-c", wrapped], check=True, capture_output=True,
                            text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def slide_arguments(description: str, out: str) -> argparse.ArgumentParser:
    """The arguments both slide benchmarks take: real tiles, a segmenter, its mpp, an output."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tiles", type=Path, required=True, help="a folder of real tiles")
    parser.add_argument("--model", type=Path, required=True, help="a segmenter model folder")
    parser.add_argument("--model-mpp", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path(out))
    return parser


def real_tiles(folder: Path, count: int = 64) -> list:
    """Up to ``count`` tiles of ``folder`` as 224 px RGB images."""
    from PIL import Image

    paths = sorted(folder.glob("*.jpg"))[:count] or sorted(folder.glob("*.png"))[:count]
    return [Image.open(p).convert("RGB").resize((224, 224)) for p in paths]


def main() -> None:
    parser = slide_arguments(__doc__.splitlines()[0], "runs/slide-bench")
    parser.add_argument("--slide-mpp", type=float, default=0.5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 20000, 40000])
    args = parser.parse_args()
    tiles = real_tiles(args.tiles)
    args.out.mkdir(parents=True, exist_ok=True)
    floor = child(f"""
from segmix.api import Segmenter
from segmix.slides.slide import Slide
import numpy as np
RESULT = {{}}
s = Segmenter.from_pretrained({str(args.model)!r})
""")
    rows = []
    for size in args.sizes:
        slide = args.out / f"slide{size}.tif"
        if not slide.exists():
            start = time.perf_counter()
            write_mosaic_slide(slide, size, tiles, args.slide_mpp)
            print(f"wrote {slide} in {time.perf_counter() - start:.0f} s", flush=True)
        predicted = child(f"""
import time
from segmix import api
start = time.perf_counter()
r = api.predict(input={str(slide)!r}, segmenter_path={str(args.model)!r},
                output_dir={str(args.out / f'pred{size}')!r}, overwrite=True,
                predict={{"slides": True, "model_mpp": {args.model_mpp}, "overlays": True}})
import json
row = json.load(open({str(args.out / f'pred{size}' / 'slides' / f'slide{size}.json')!r}))
RESULT = {{"seconds": time.perf_counter() - start, "mpx": row["width"] * row["height"] / 1e6,
          "blocks_predicted": row["blocks_predicted"]}}
""")
        tiled = child(f"""
import time
from segmix import api
import pathlib, shutil
folder = pathlib.Path({str(args.out / f'slides{size}' / 'A')!r}); folder.mkdir(parents=True, exist_ok=True)
link = folder / "s.tif"
link.unlink(missing_ok=True); link.symlink_to(pathlib.Path({str(slide.resolve())!r}))
start = time.perf_counter()
r = api.tile(slides=str(folder.parent), output_dir={str(args.out / f'tiles{size}')!r}, overwrite=True,
             tile={{"mpp": {args.model_mpp}, "size": 224}})
RESULT = {{"seconds": time.perf_counter() - start, "tiles": r.metrics["tiles"]}}
""")
        rows.append((size, predicted, tiled))
        print(size, predicted, tiled, flush=True)
    print(f"\nfloor (model loaded): {floor['peak_rss_mb']:.0f} MB peak RSS")
    print("| slide (level-0 px) | mask px at model mpp | blocks with tissue | predict s | Mpx/s |"
          " peak RSS MB | tile s | tiles | tiles/s | tile peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size, p, t in rows:
        print(f"| {size}x{size} | {p['mpx']:.0f} Mpx | {100 * p['blocks_predicted']:.0f}% |"
              f" {p['seconds']:.0f} | {p['mpx'] / p['seconds']:.2f} | {p['peak_rss_mb']:.0f} |"
              f" {t['seconds']:.0f} | {t['tiles']} | {t['tiles'] / t['seconds']:.1f} |"
              f" {t['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
