"""Exported models against the eager model: largest logit difference and CPU latency.

For each model (a model folder or ``.pt``) and format, ``segmix export`` writes the export and
checks it on real tiles of ``--images`` (a folder); this script then times a batch through the
eager PyTorch model (the baseline, same process, same threads), the TorchScript file and ONNX
Runtime, and prints a table (medians of ``--repeats`` runs after one warm-up).

    python benchmarks/export_parity.py --images ../shared/data/ebhi-seg/images/Normal \\
        --model runs/ebhi-cls-plain-s0/classifier.pt --out runs/export-bench
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from segmix import api
from segmix.models.export import SUFFIXES, NormalisedModel, load_exported


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--images", type=Path, required=True, help="a folder of real tiles")
    parser.add_argument("--out", type=Path, default=Path("runs/export-bench"))
    parser.add_argument("--count", type=int, default=16, help="tiles checked and timed")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.count} tiles of"
          f" {args.images}")
    header = "| model | format | max abs diff | max abs logit | eager ms/batch | export ms/batch | speed-up |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for model_path in args.model:
        for fmt in ("torchscript", "onnx"):
            out = args.out / f"{model_path.parent.name}-{model_path.stem}-{fmt}"
            result = api.export(model=model_path, output_dir=out, overwrite=True,
                                export={"format": fmt, "check_images": str(args.images),
                                        "check_count": args.count})
            model = api.load_pretrained(model_path)
            size = model.image_size
            images = torch.rand(args.count, 3, *size)  # timing does not depend on the content
            wrapped = NormalisedModel(model.network, model.mean, model.std).eval()
            path = out / f"model{SUFFIXES[fmt]}"
            with torch.no_grad():
                eager = median_seconds(lambda: wrapped(images), args.repeats)
            exported_model = load_exported(path, fmt)
            exported = median_seconds(lambda: exported_model(images), args.repeats)
            metrics = result.metrics
            lines.append(f"| {model_path} ({model.kind}, {size[0]} px) | {fmt} |"
                         f" {metrics['max_abs_difference']:.2g} | {metrics['max_abs_logit']:.3g} |"
                         f" {eager * 1e3:.0f} | {exported * 1e3:.0f} | {eager / exported:.2f}x |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
