"""Sliding-window prediction on large images: time and peak memory, band design vs full-image maps.

Each variant runs in a fresh subprocess (so its peak resident memory, VmHWM, is its own) on a
random RGB image, with a U-Net + EfficientNet-Lite0 (offline weights; the decoder is untrained,
which does not change the cost) predicting 7 classes through 224 px windows with 0.25 overlap:

* **band** : ``segmix.models.sliding_window.sliding_window_predict`` (one band of windows in
  memory);
* **full maps**: the usual approach, written here as the same-run baseline: the same windows and
  Gaussian weights accumulated into full-image logit and weight maps, argmax at the end.

Usage: .venv/bin/python benchmarks/predict_large.py [--sizes 2000x1500 4000x3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import textwrap

import torch

CHILD = textwrap.dedent("""
    import json, math, sys, time
    import numpy as np, torch
    from segmix.models.factory import create_segmenter, segmenter_normalization
    from segmix.models.sliding_window import blend_weights, sliding_window_predict, window_starts

    def status_mib(field):
        with open("/proc/self/status") as f:
            return int(next(l for l in f if l.startswith(field + ":")).split()[1]) / 1024

    variant, height, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(0)
    model = create_segmenter("Unet", "tu-tf_efficientnet_lite0", 7,
                             encoder_weights="efficientnet-lite0-wheel").eval()
    mean, std = segmenter_normalization("tu-tf_efficientnet_lite0")
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    with torch.no_grad():
        model(torch.zeros(8, 3, 224, 224))  # warm-up: allocator and kernels
    before = status_mib("VmRSS")
    start = time.perf_counter()
    if variant == "band":
        mask, _ = sliding_window_predict(model, image, window=224, mean=mean, std=std, overlap=0.25,
                                         batch_size=8)
    else:
        stride = math.floor(224 * 0.75)
        weights = blend_weights(224, 224)
        logits = torch.zeros(7, height, width)
        total = torch.zeros(height, width)
        m = torch.tensor(mean).view(1, 3, 1, 1) * 255
        s = torch.tensor(std).view(1, 3, 1, 1) * 255
        boxes = [(y, x) for y in window_starts(height, 224, stride)
                 for x in window_starts(width, 224, stride)]
        with torch.no_grad():
            for i in range(0, len(boxes), 8):
                chunk = boxes[i:i + 8]
                crops = np.stack([image[y:y + 224, x:x + 224] for y, x in chunk])
                batch = (torch.from_numpy(crops).permute(0, 3, 1, 2).float() - m) / s
                for (y, x), out in zip(chunk, model(batch)):
                    logits[:, y:y + 224, x:x + 224] += out * weights
                    total[y:y + 224, x:x + 224] += weights
        mask = (logits / total).argmax(0).to(torch.uint8).numpy()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "growth_mib": status_mib("VmHWM") - before,
                      "image_mib": image.nbytes / 2**20}))
""")


def measure(variant: str, height: int, width: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, variant, str(height), str(width)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["2000x1500", "4000x3000"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__},"
          f" {torch.get_num_threads()} threads; medians of {args.repeats} runs")
    print("| image | variant | seconds | Mpx/s | peak growth MiB | image MiB | growth / full maps |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        results = {v: [] for v in ("band", "full maps")}
        for _ in range(args.repeats):  # interleaved rounds
            for variant in results:
                results[variant].append(measure(variant, height, width))
        full = statistics.median(r["growth_mib"] for r in results["full maps"])
        for variant, runs in results.items():
            seconds = statistics.median(r["seconds"] for r in runs)
            growth = statistics.median(r["growth_mib"] for r in runs)
            print(f"| {size} | {variant} | {seconds:.1f} | {width * height / 1e6 / seconds:.2f} |"
                  f" {growth:.0f} | {runs[0]['image_mib']:.0f} | {growth / full:.2f} |", flush=True)


if __name__ == "__main__":
    main()
