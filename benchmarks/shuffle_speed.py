"""Speed of the patch shuffle against the memory floor, clone() and a naive loop, in one process.

    python benchmarks/shuffle_speed.py [--repeats 21] [--modes batch random] [--json out.json]

For each case (float32 batches) it times, interleaved round by round and reported as medians:

* ``shuffle``     sample_params + apply_params into a reused output buffer (``out=``);
* ``shuffle new`` the same, returning a freshly allocated tensor (the default call);
* ``copy``        ``out.copy_(x)`` into a preallocated tensor: one read + one write, the floor;
* ``clone``       ``x.clone()``: a copy into fresh memory (pays page faults above ~32 MB here);
* ``naive loop``  a per-grid-position Python loop of batch-indexed slice copies (baseline).

On CUDA (when available) it reports the shuffle's effective bandwidth (bytes read + written per
second) as a fraction of a device-to-device copy's.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from segmix.shuffle import apply_params, sample_params
from segmix.shuffle.apply import _row_index

CASES = [(64, 3, 224, 16), (64, 3, 224, 32), (16, 3, 384, 16)]
GROUP_SIZE = 4  # for mode "group"
# The original CellMix implementation on this 2-core CPU, as quoted in the issue (not re-measured).
ORIGINAL_MS = {(64, 3, 224, 16): 330.0, (64, 3, 224, 32): 370.0, (16, 3, 384, 16): 120.0}


def naive_loop_shuffle(x: torch.Tensor, patch: int, fix_ratio: float, generator) -> torch.Tensor:
    """Straightforward baseline: for every moved grid position, copy a batch-permuted slice."""
    batch, _, height, width = x.shape
    gh, gw = height // patch, width // patch
    out = x.clone()
    positions = torch.randperm(gh * gw, generator=generator)
    for n in positions[int(round(fix_ratio * gh * gw)):].tolist():
        i, j = divmod(n, gw)
        rows, cols = slice(i * patch, (i + 1) * patch), slice(j * patch, (j + 1) * patch)
        out[:, :, rows, cols] = x[torch.randperm(batch, generator=generator), :, rows, cols]
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def time_interleaved(functions: Dict[str, Callable[[], object]], repeats: int,
                     synchronize: Callable[[], None]) -> Dict[str, float]:
    """Median milliseconds of each function, running them round-robin ``repeats`` times."""
    samples: Dict[str, List[float]] = {name: [] for name in functions}
    for function in functions.values():  # warm-up
        function()
    synchronize()
    for _ in range(repeats):
        for name, function in functions.items():
            synchronize()
            start = time.perf_counter()
            function()
            synchronize()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def run_cpu(repeats: int, modes: List[str]) -> List[dict]:
    rows = []
    for case in CASES:
        batch, channels, size, patch = case
        x = torch.randn(batch, channels, size, size)
        out = torch.empty_like(x)
        generator = torch.Generator().manual_seed(0)

        def shuffle(mode, target=None):
            params = sample_params(batch, size, size, patch_size=patch, fix_ratio=0.5, mode=mode,
                                   group_size=GROUP_SIZE, generator=generator)
            return apply_params(x, params, out=target)

        functions: Dict[str, Callable[[], object]] = {
            "copy": lambda: out.copy_(x),
            "clone": lambda: x.clone(),
            "naive loop": lambda: naive_loop_shuffle(x, patch, 0.5, generator),
        }
        for mode in modes:
            functions[f"shuffle {mode}"] = lambda mode=mode: shuffle(mode, out)
            functions[f"shuffle {mode} new"] = lambda mode=mode: shuffle(mode)
        medians = time_interleaved(functions, repeats, lambda: None)
        for mode in modes:
            rows.append({
                "case": f"{batch}x{channels}x{size}x{size} P={patch}",
                "mode": mode,
                "MB": x.numel() * x.element_size() / 2**20,
                "shuffle_ms": medians[f"shuffle {mode}"],
                "shuffle_new_ms": medians[f"shuffle {mode} new"],
                "copy_ms": medians["copy"],
                "clone_ms": medians["clone"],
                "naive_loop_ms": medians["naive loop"],
                "original_ms": ORIGINAL_MS[case],
            })
    return rows


def run_cuda(repeats: int, modes: List[str]) -> List[dict]:
    rows = []
    for batch, channels, size, patch in CASES:
        x = torch.randn(batch, channels, size, size, device="cuda")
        out = torch.empty_like(x)
        generator = torch.Generator(device="cuda").manual_seed(0)
        functions: Dict[str, Callable[[], object]] = {"copy": lambda: out.copy_(x)}
        for mode in modes:
            functions[f"shuffle {mode}"] = lambda mode=mode: apply_params(
                x, sample_params(batch, size, size, patch_size=patch, fix_ratio=0.5, mode=mode,
                                 group_size=GROUP_SIZE, generator=generator), out=out)
            params = sample_params(batch, size, size, patch_size=patch, fix_ratio=0.5, mode=mode,
                                   group_size=GROUP_SIZE, generator=generator)
            functions[f"apply {mode}"] = lambda params=params: apply_params(x, params, out=out)
            # the baseline: the CPU path's row gather (the CUDA path before the patch gather)
            functions[f"rows {mode}"] = lambda params=params: torch.index_select(
                x.view(-1, patch), 0, _row_index(params, channels, x.device), out=out.view(-1, patch))
        medians = time_interleaved(functions, repeats, torch.cuda.synchronize)
        bytes_moved = 2 * x.numel() * x.element_size()
        for mode in modes:
            rows.append({
                "case": f"{batch}x{channels}x{size}x{size} P={patch}",
                "mode": mode,
                "shuffle_ms": medians[f"shuffle {mode}"],
                "apply_ms": medians[f"apply {mode}"],
                "row_gather_ms": medians[f"rows {mode}"],
                "copy_ms": medians["copy"],
                "copy_GBps": bytes_moved / medians["copy"] / 1e6,
                "apply_GBps": bytes_moved / medians[f"apply {mode}"] / 1e6,
            })
    return rows


def print_table(columns: List[str], cells: List[List[str]]) -> None:
    """A markdown table."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in cells:
        print("| " + " | ".join(row) + " |")


def print_cpu(rows: List[dict]) -> None:
    print_table(
        ["case", "mode", "shuffle ms", "copy floor ms", "shuffle / floor", "shuffle new ms",
         "clone ms", "new / clone", "naive loop ms", "original ms (quoted)", "speed-up vs original"],
        [[r["case"], r["mode"], f"{r['shuffle_ms']:.1f}", f"{r['copy_ms']:.1f}",
          f"{r['shuffle_ms'] / r['copy_ms']:.1f}x", f"{r['shuffle_new_ms']:.1f}",
          f"{r['clone_ms']:.1f}", f"{r['shuffle_new_ms'] / r['clone_ms']:.1f}x",
          f"{r['naive_loop_ms']:.1f}", f"{r['original_ms']:.0f}",
          f"{r['original_ms'] / r['shuffle_ms']:.0f}x"] for r in rows])


def print_cuda(rows: List[dict]) -> None:
    print_table(
        ["case", "mode", "shuffle ms (sample+apply)", "apply ms", "row gather ms (baseline)",
         "apply speed-up", "copy ms", "apply GB/s", "copy GB/s", "apply / copy bandwidth"],
        [[r["case"], r["mode"], f"{r['shuffle_ms']:.3f}", f"{r['apply_ms']:.3f}",
          f"{r['row_gather_ms']:.3f}", f"{r['row_gather_ms'] / r['apply_ms']:.1f}x",
          f"{r['copy_ms']:.3f}", f"{r['apply_GBps']:.0f}", f"{r['copy_GBps']:.0f}",
          f"{r['apply_GBps'] / r['copy_GBps']:.0%}"] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--modes", nargs="+", default=["batch", "random"])
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--skip-cpu", action="store_true", help="only the CUDA table")
    args = parser.parse_args()
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_name()}
    print(f"torch {info['torch']}, {info['threads']} threads, {info['cpu']}; "
          f"medians of {args.repeats} interleaved runs; fix_ratio 0.5")
    results: Dict[str, object] = {"machine": info}
    if not args.skip_cpu:
        results["cpu"] = run_cpu(args.repeats, args.modes)
        print_cpu(results["cpu"])
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        print(f"\nCUDA: {info['gpu']}")
        results["cuda"] = run_cuda(args.repeats, args.modes)
        print_cuda(results["cuda"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
