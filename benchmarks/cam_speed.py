"""All-class Grad-CAM (segmix ``cam``) against the ``grad-cam`` package, class by class.

    python benchmarks/cam_speed.py [--batch 16] [--size 224] [--repeats 5]

Same model (timm ``tf_efficientnet_lite0``, offline ImageNet backbone, a K-class head), same batch,
same target layer. ``cam`` computes the K maps with one forward pass and one batched backward pass;
the package needs one forward and one full backward pass per class. Before timing, the benchmark
checks that both give the same maps (max absolute difference printed). Medians of ``--repeats``
interleaved runs.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
from pytorch_grad_cam import GradCAM as PackageGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cam import GradCAM
from segmix.models.factory import OFFLINE_LITE0, create_classifier


def package_maps(reference: PackageGradCAM, layer, images: torch.Tensor, classes: int) -> np.ndarray:
    """The package's raw maps (before its normalisation), class by class: ``[B, K, h, w]``."""
    maps = []
    for k in range(classes):
        reference(input_tensor=images, targets=[ClassifierOutputTarget(k)] * images.shape[0])
        store = reference.activations_and_grads
        raw = reference.get_cam_image(images, layer, None, store.activations[0].numpy(),
                                      store.gradients[0].numpy(), False)
        maps.append(np.maximum(raw, 0))
    return np.stack(maps, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layer", default="bn2", help="target layer (bn2: the final feature map)")
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}x3x"
          f"{args.size}x{args.size}, layer {args.layer}, medians of {args.repeats} runs")
    print("| K classes | segmix all-class ms | grad-cam per-class ms | segmix images/s |"
          " grad-cam images/s | speed-up | max abs difference |")
    print("|---|---|---|---|---|---|---|")
    for classes in (4, 6):
        model = create_classifier("tf_efficientnet_lite0", classes, weights=OFFLINE_LITE0).eval()
        twin = copy.deepcopy(model)  # the package hooks its own copy; its hooks cannot be batched
        layer = twin.get_submodule(args.layer)
        ours = GradCAM(model, [args.layer])
        with PackageGradCAM(model=twin, target_layers=[layer]) as reference:
            ours_maps = ours.layer_maps(images)[0][0].numpy()
            difference = float(np.abs(ours_maps - package_maps(reference, layer, images, classes)).max())
            times = {"ours": [], "package": []}
            for _ in range(args.repeats):
                start = time.perf_counter()
                ours.layer_maps(images)
                times["ours"].append(time.perf_counter() - start)
                start = time.perf_counter()
                package_maps(reference, layer, images, classes)
                times["package"].append(time.perf_counter() - start)
        ours_s, package_s = statistics.median(times["ours"]), statistics.median(times["package"])
        print(f"| {classes} | {ours_s * 1e3:.0f} | {package_s * 1e3:.0f} | {args.batch / ours_s:.1f} |"
              f" {args.batch / package_s:.1f} | {package_s / ours_s:.1f}x | {difference:.2e} |")


if __name__ == "__main__":
    main()
