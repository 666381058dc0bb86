"""Reader threads and block size of whole-slide prediction: one slide, several settings.

Writes (once) a square slide mosaicked from real tiles (``benchmarks/slide_predict.py``'s
``write_mosaic_slide``) and times ``segmix predict --set predict.slides=true`` with each
(block, batch size, readers) setting in turn, in one process; prints a table. Meant for a GPU,
where reading the slide is what the model waits for.

    python benchmarks/slide_readers.py --tiles ../shared/data/ebhi-seg/images \\
        --model runs/demo/segmenter/model --size 40000
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slide_predict import real_tiles, slide_arguments, write_mosaic_slide  # noqa: E402

from segmix import api  # noqa: E402

SETTINGS = [(2048, 8, 1), (2048, 8, 4), (8192, 64, 1), (8192, 64, 4)]


def main() -> None:
    parser = slide_arguments(__doc__.splitlines()[0], "runs/slide-readers")
    parser.add_argument("--size", type=int, default=40000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    slide = args.out / f"slide{args.size}.tif"
    if not slide.exists():
        write_mosaic_slide(slide, args.size, real_tiles(args.tiles), 0.5)
    rows = []
    for block, batch, readers in SETTINGS:
        start = time.perf_counter()
        result = api.predict(input=str(slide), segmenter_path=str(args.model), overwrite=True,
                             output_dir=args.out / f"pred-{block}-{batch}-{readers}",
                             predict={"slides": True, "model_mpp": args.model_mpp, "block": block,
                                      "batch_size": batch, "readers": readers})
        seconds = time.perf_counter() - start
        megapixels = result.metrics["megapixels_per_s"] * result.metrics["seconds"]
        rows.append(f"| {block} | {batch} | {readers} | {seconds:.1f} | {megapixels / seconds:.1f} |")
    print("| predict.block | batch_size | readers | seconds | Mpx/s |\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
