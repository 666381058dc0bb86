"""The per-item stages across processes (segmix.sharding): under ``torchrun`` on the CPU (gloo) and
as job-array shares, ``predict`` (images and slides), ``tile``, ``localise`` and ``pseudo-masks
--from-run`` (its ``cams`` and ``localise`` steps too) write the same files as one process, compute
every item once, and a run whose rank died is finished by the next run with another number of
processes."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segmix.cli import main
from segmix.config import ConfigError
from segmix.models.factory import create_segmenter, save_segmenter
from segmix.sharding import Shard, check_shard, current_shard, wait_for_file
from segmix.slides.masks import read_mask_pyramid

from synthetic import read_rows, train_cls_args, write_csv_dataset
from test_pipeline import TINY_MODELS
from test_slides import slide_pixels, write_slide


def torchrun(processes, command, out, settings, *flags):
    """``segmix COMMAND`` under ``torchrun --nproc_per_node=PROCESSES`` on the CPU."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", "-m", "segmix.cli", command, "--output-dir", str(out),
            *[a for s in settings for a in ("--set", s)], *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)


def cli(command, out, settings, *flags):
    return main([command, "--output-dir", str(out), *[a for s in settings for a in ("--set", s)],
                 *flags])


def files(folder: Path, pattern: str = "*"):
    """``{relative path: bytes}`` of the files under ``folder`` matching ``pattern``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob(pattern))
            if p.is_file() and not p.name.startswith(".")}


def without(rows, *columns):
    return [{k: v for k, v in row.items() if k not in columns} for row in rows]


def assert_ranks(summary, processes, items, shares=None):
    """``summary`` records ``processes`` ranks sharing ``items``: every ``processes``-th item, or
    ``shares`` items each (a stage that shares whole batches); returns how many the ranks
    computed in the run."""
    ranks = summary["ranks"]
    assert [r["rank"] for r in ranks] == list(range(processes))
    assert sum(r["items"] for r in ranks) == items
    assert [r["items"] for r in ranks] == (
        shares or [len(range(i, items, processes)) for i in range(processes)])
    return sum(r["computed"] for r in ranks)


def test_shares_are_disjoint_deterministic_and_cover_every_item():
    items = list("abcdefghij")
    for count in range(1, 6):
        shares = [Shard(i, count).take(items) for i in range(count)]
        taken = sorted(p for share in shares for p in share)
        assert taken == list(range(len(items)))  # every item once
        assert shares == [Shard(i, count).take(items) for i in range(count)]


def test_shard_settings_are_checked(monkeypatch):
    for bad in ("2/2", "1", "a/b", "-1/3", "1/0"):
        with pytest.raises(ConfigError, match="shard"):
            check_shard(bad)
    assert current_shard("1/3") == Shard(1, 3) and current_shard(None) == Shard()
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK_ID"):
        check_shard("slurm")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "12")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "10")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MAX", "13")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert current_shard("slurm") == Shard(2, 4)
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")  # --array=10,13: not contiguous
    with pytest.raises(ConfigError, match="contiguous"):
        check_shard("slurm")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert current_shard(None) == Shard(1, 2, torchrun=True)
    with pytest.raises(ConfigError, match="under torchrun"):
        check_shard("0/2")


def test_a_share_waits_for_a_file_another_share_writes(tmp_path, capsys):
    path = tmp_path / "fit.pt"
    writer = threading.Timer(0.3, path.write_bytes, args=(b"fit",))
    writer.start()
    wait_for_file(path, "the fit", poll_seconds=0.05)
    assert path.read_bytes() == b"fit" and "waiting for the fit" in capsys.readouterr().out


@pytest.fixture(scope="module")
def segmenter_file(tmp_path_factory):
    torch.manual_seed(0)
    unet = create_segmenter("Unet", "tu-test_efficientnet", 3, encoder_weights=None).eval()
    path = tmp_path_factory.mktemp("model") / "segmenter.pt"
    save_segmenter(path, unet, arch="Unet", encoder="tu-test_efficientnet", classes=["A", "B"],
                   image_size=(64, 64))
    return path


def write_images(folder, count=5):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        size = (48 + 16 * i, 80 - 8 * i, 3)
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, segmenter_file):
    """Five images predicted by one process: the reference."""
    root = tmp_path_factory.mktemp("predict")
    images = write_images(root / "images")
    out = root / "one"
    assert cli("predict", out, [f"input={images}"], "--model", str(segmenter_file)) == 0
    return images, out


def assert_same_predictions(reference, out):
    assert files(out / "masks") == files(reference / "masks")
    assert files(out / "overlays") == files(reference / "overlays")
    assert (out / "predictions.csv").read_bytes() == (reference / "predictions.csv").read_bytes()


def test_predict_under_torchrun_equals_one_process(one_process, segmenter_file, tmp_path):
    images, reference = one_process
    out = tmp_path / "two"
    result = torchrun(2, "predict", out, [f"input={images}"], "--model", str(segmenter_file))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_predictions(reference, out)
    summary = json.loads((out / "summary.json").read_text())
    assert_ranks(summary, 2, 5)
    assert summary["predicted_now"] == 5 and [r["computed"] for r in summary["ranks"]] == [3, 2]
    assert json.loads((reference / "summary.json").read_text())["ranks"][0]["items"] == 5


def test_a_rank_that_died_is_finished_by_a_run_with_other_ranks(one_process, segmenter_file,
                                                                tmp_path):
    images, reference = one_process
    broken = tmp_path / "images"
    broken.mkdir()
    for path in images.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "img3.png").write_bytes(b"not a png")  # rank 1's second image: rank 1 fails
    out = tmp_path / "killed"
    result = torchrun(2, "predict", out, [f"input={broken}"], "--model", str(segmenter_file))
    assert result.returncode != 0 and "img3.png" in result.stderr
    assert not (out / "summary.json").exists()
    done_before = {p.name for p in (out / "masks").glob("*.png")}
    assert "img1.png" in done_before and "img3.png" not in done_before

    (broken / "img3.png").write_bytes((images / "img3.png").read_bytes())
    result = torchrun(3, "predict", out, [f"input={broken}"], "--model", str(segmenter_file))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predicted_now"] == 5 - len(done_before)  # nothing computed twice
    assert_ranks(summary, 3, 5)
    assert files(out / "masks") == files(reference / "masks")


def test_job_array_shares_merge_when_the_last_one_ends(one_process, segmenter_file, tmp_path,
                                                       capsys):
    images, reference = one_process
    out = tmp_path / "array"
    settings = [f"input={images}"]
    assert cli("predict", out, settings + ["shard=1/2"], "--model", str(segmenter_file)) == 0
    assert "shard(s) [0] still to finish" in capsys.readouterr().out
    assert not (out / "summary.json").exists()
    assert sorted(p.name for p in (out / "masks").glob("*.png")) == ["img1.png", "img3.png"]
    assert cli("predict", out, settings + ["shard=0/2"], "--model", str(segmenter_file)) == 0
    assert_same_predictions(reference, out)
    assert_ranks(json.loads((out / "summary.json").read_text()), 2, 5)
    assert "shard: null" in (out / "config.yaml").read_text()
    # the finished run is finished for every share, and for the whole
    assert cli("predict", out, settings + ["shard=1/2"], "--model", str(segmenter_file)) == 1


def test_tile_and_predict_slides_under_torchrun_equal_one_process(segmenter_file, tmp_path):
    slides = tmp_path / "slides"
    for name, label in (("p1", "A"), ("p2", "A"), ("n1", "B")):
        write_slide(slides / label / f"{name}.tif", slide_pixels())
    tile = [f"slides={slides}", "tile.mpp=2.0", "tile.size=64", "tile.min_tissue=0.3"]
    assert cli("tile", tmp_path / "tiles-one", tile) == 0
    result = torchrun(2, "tile", tmp_path / "tiles-two", tile)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("labels.csv", "slides.csv", "data.yaml"):
        one = (tmp_path / "tiles-one" / name).read_text().replace("tiles-one", "tiles-two")
        assert (tmp_path / "tiles-two" / name).read_text() == one
    assert files(tmp_path / "tiles-two" / "tiles") == files(tmp_path / "tiles-one" / "tiles")
    summary = json.loads((tmp_path / "tiles-two" / "summary.json").read_text())
    assert assert_ranks(summary, 2, 3) == 3  # every slide tiled once

    predict = [f"input={slides / 'A'}", "predict.slides=true", "predict.block=256",
               "predict.model_mpp=2.0"]
    assert cli("predict", tmp_path / "slides-one", predict, "--model", str(segmenter_file)) == 0
    result = torchrun(2, "predict", tmp_path / "slides-two", predict, "--model",
                      str(segmenter_file))
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("p1", "p2"):
        one = read_mask_pyramid(tmp_path / "slides-one" / "masks" / f"{name}.tiff")
        two = read_mask_pyramid(tmp_path / "slides-two" / "masks" / f"{name}.tiff")
        np.testing.assert_array_equal(one[0], two[0])
        assert one[1] == two[1]
    assert (without(read_rows(tmp_path / "slides-two" / "predictions.csv"), "seconds")
            == without(read_rows(tmp_path / "slides-one" / "predictions.csv"), "seconds"))
    summary = json.loads((tmp_path / "slides-two" / "summary.json").read_text())
    assert assert_ranks(summary, 2, 2) == summary["predicted_now"] == 2


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny classifier of a synthetic dataset: the settings of a stage that reads it."""
    root = tmp_path_factory.mktemp("cams")
    csv_path = write_csv_dataset(root / "tiles", per_class=4, size=32)
    classifier = root / "classifier"
    assert main(train_cls_args(csv_path, classifier, "train.epochs=1", "train.batch_size=6",
                               "augment.curriculum.patch_sizes=[16, 8]")) == 0
    data = ["data.classes=[A, B, C]", f"data.train.path={csv_path}", f"data.val.path={csv_path}",
            "data.image_size=32"]
    settings = data + [f"classifier={classifier / 'classifier.pt'}", "splits=[train, val]"]
    return settings


def test_localise_fits_once_and_shares_its_maps(classifier, tmp_path, capsys):
    settings = classifier + [
        "localiser.feature_layers=[blocks.1, blocks.2]", "localiser.naming_tiles=4",
        "localiser.batch_size=4"]
    assert cli("localise", tmp_path / "one", settings) == 0
    result = torchrun(2, "localise", tmp_path / "two", settings)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("localiser: reusing") == 1  # rank 1 took rank 0's fit
    one, two = tmp_path / "one", tmp_path / "two"
    assert files(two / "maps") == files(one / "maps") and len(files(one / "maps")) == 12
    assert (two / "axis.pt").is_file()
    summary = json.loads((two / "summary.json").read_text())
    assert assert_ranks(summary, 2, 12, shares=[8, 4]) == 12  # batches of 4: 0, 2 | 1
    assert summary["maps_written"] == 12

    array = tmp_path / "array"  # share 1 waits for share 0's fit; the last share merges
    (array).mkdir()
    (array / "axis.pt").write_bytes((one / "axis.pt").read_bytes())
    assert cli("localise", array, settings + ["shard=1/2"]) == 0
    assert "localiser: reusing" in capsys.readouterr().out
    assert not (array / "summary.json").exists()
    assert cli("localise", array, settings + ["shard=0/2"]) == 0
    assert files(array / "maps") == files(one / "maps")
    assert cli("localise", array, settings + ["shard=0/2"], "--overwrite") == 1
    assert "new --output-dir" in capsys.readouterr().err


def segmix_process(out, settings, *flags):
    """``segmix pseudo-masks`` in a process of its own, started now."""
    args = [sys.executable, "-m", "segmix.cli", "pseudo-masks", "--output-dir", str(out),
            *[a for s in settings for a in ("--set", s)], *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def test_pseudo_masks_from_a_run_across_processes_equal_one_process(tmp_path):
    csv_path = write_csv_dataset(tmp_path / "tiles", per_class=8, size=32)
    run = tmp_path / "run"
    assert cli("run", run, ["data.classes=[A, B, C]", f"data.train.path={csv_path}",
                            f"data.val.path={csv_path}", *TINY_MODELS, "localiser.smoothing=3",
                            "localiser.naming_tiles=6"]) == 0
    flags = ("--from-run", str(run), "--input", str(csv_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each process below: other thread counts round otherwise
    try:
        assert cli("pseudo-masks", tmp_path / "one", ["overlays=true"], *flags) == 0
    finally:
        torch.set_num_threads(threads)
    one = tmp_path / "one"

    result = torchrun(2, "pseudo-masks", tmp_path / "two", ["overlays=true"], *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    # a job array: both shares at once; each waits for the other's CAMs and maps
    shares = [segmix_process(tmp_path / "array", ["overlays=true", f"shard={i}/2"], *flags)
              for i in (1, 0)]
    for share in shares:
        assert share.wait(timeout=600) == 0, share.stderr.read()[-3000:]
    for out in (tmp_path / "two", tmp_path / "array"):
        assert files(out / "masks") == files(one / "masks") and len(files(one / "masks")) == 25
        assert files(out / "overlays") == files(one / "overlays")
        assert files(out / "localiser" / "maps") == files(one / "localiser" / "maps")
        for name in ("masks.csv", "metrics.json", "cams/index.csv", "tiles_by_quality.csv",
                     "worst_tiles.png"):
            assert (out / name).read_bytes() == (one / name).read_bytes(), (out, name)
        cams = files(one / "cams", "*.npz")
        assert sorted(files(out / "cams", "*.npz")) == sorted(cams) and len(cams) == 24
        for name in cams:  # whole batches shared: each tile's CAMs to the bit
            with np.load(one / "cams" / name) as a, np.load(out / "cams" / name) as b:
                for key in ("cams", "labels", "probabilities"):
                    np.testing.assert_array_equal(a[key], b[key])
        summary = json.loads((out / "summary.json").read_text())
        assert assert_ranks(summary, 2, 24) == 24  # every tile's mask made once
