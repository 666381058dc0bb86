"""Peak memory of reading a plain (stripped, one-level) TIFF slide: segmix's strip reader against
OpenSlide's whole-image fallback, which segmix used before.

Writes (once) square plain TIFFs of real tissue (scikit-image's IHC image, mosaicked; zlib, 64
rows a strip), then runs each arm in a
fresh process and reads its peak resident memory (``ru_maxrss``):

* ``floor``: the process opens the slide and reads nothing (interpreter, NumPy, OpenSlide);
* ``thumbnail``: ``Slide.tissue`` at 16 mpp, the first thing ``segmix tile`` and
  ``segmix predict --set predict.slides=true`` do;
* ``regions``: every 1024 px region of level 0, row by row, as ``segmix tile`` reads tiles;
* ``whole-image fallback``: the thumbnail as before (OpenSlide's ``ImageSlide``: PIL decodes the
  whole image), for sizes PIL agrees to open (it refuses images over ~179 Mpx as bombs).

    python benchmarks/plain_tiff_memory.py --sizes 8000 40000 --out runs/plain-tiff
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MPP = 0.5
ROWS_PER_STRIP = 64

ARMS = {
    "floor": "from segmix.slides.slide import Slide\nslide = Slide(path, 0.5)",
    "thumbnail": "from segmix.slides.slide import Slide\nSlide(path, 0.5).tissue(16.0, 0.07)",
    "regions": (
        "from segmix.slides.slide import Slide\nslide = Slide(path, 0.5)\nw, h = slide.dimensions\n"
        "for y in range(0, h, 1024):\n"
        "    for x in range(0, w, 1024):\n"
        "        slide.read(x, y, 1024, 1024, 0.5)"),
    "whole-image fallback": (
        "import numpy as np, openslide\nfrom segmix.data import resized\n"
        "s = openslide.ImageSlide(path)\nw, h = s.dimensions\n"
        "rgba = np.asarray(s.read_region((0, 0), 0, (w, h)))\n"
        "alpha = rgba[..., 3:4].astype(np.float32) / 255\n"
        "rgb = (rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)\n"
        "resized(rgb, (round(h / 32), round(w / 32)))"),
}
PIL_LIMIT = 178956970  # PIL.Image.MAX_IMAGE_PIXELS * 2: above it PIL refuses to decode


def write_plain_tiff(path: Path, size: int) -> None:
    """A ``size`` x ``size`` plain TIFF of IHC tissue (the writer holds the image; the readers
    measured are other processes)."""
    import tifffile
    from skimage import data as skdata

    tile = skdata.immunohistochemistry()  # 512 x 512 real tissue
    row = np.concatenate([tile, tile[:, ::-1]], axis=1)
    band = np.concatenate([row, row[::-1]], axis=0)  # 1024 x 1024
    reps = -(-size // 1024)
    image = np.tile(band, (reps, reps, 1))[:size, :size]
    partial = path.with_name(f".{path.name}.partial")  # a killed write leaves no slide behind
    tifffile.imwrite(partial, image, bigtiff=image.nbytes > 2**31, photometric="rgb",
                     rowsperstrip=ROWS_PER_STRIP, compression="zlib",
                     resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    partial.replace(path)


def peak_mib(code: str, path: Path) -> tuple:
    """(peak RSS in MiB, seconds) of a fresh process running ``code`` on ``path``."""
    report = "\nimport resource\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    start = time.perf_counter()
    process = subprocess.run([sys.executable, "-c", f"path = {str(path)!r}\n{code}{report}"],
                             capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if process.returncode:
        return None, process.stderr.strip().splitlines()[-1][:80]
    return int(process.stdout.split()[-1]) / 1024, seconds  # ru_maxrss: KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8000, 40000])
    parser.add_argument("--out", type=Path, default=Path("runs/plain-tiff"))
    parser.add_argument("--write", nargs=2, metavar=("PATH", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        write_plain_tiff(Path(args.write[0]), int(args.write[1]))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{platform.node()}, {platform.processor() or platform.machine()}, Python"
          f" {platform.python_version()}")
    rows = []
    for size in sorted(args.sizes):
        path = args.out / f"plain{size}.tif"
        if not path.exists():  # in a child: a parent that held the image would pass its peak
            print(f"writing {path}", flush=True)  # on to every process it starts (ru_maxrss)
            subprocess.run([sys.executable, __file__, "--write", str(path), str(size)], check=True)
        raw = size * size * 3 / 2**20
        for arm, code in ARMS.items():
            if arm == "whole-image fallback" and size * size > PIL_LIMIT:
                rows.append(f"| {size}² | {arm} | not run: PIL refuses {size * size / 1e6:.0f} Mpx |"
                            f" | |")
                continue
            peak, seconds = peak_mib(code, path)
            if peak is None:
                rows.append(f"| {size}² | {arm} | failed: {seconds} | | |")
                continue
            rows.append(f"| {size}² | {arm} | {peak:,.0f} | {peak / raw:.3f} | {seconds:.1f} |")
            print(rows[-1], flush=True)
    print("\n| slide (plain TIFF) | arm | peak RSS MiB | peak / raw RGB size | seconds |\n"
          "|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
