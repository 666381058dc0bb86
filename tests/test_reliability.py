"""What segmix promises about files it is handed and folders it writes (docs/reliability.md): no
code runs from a file, one run per folder, no temporaries left behind, plain TIFFs in bounded
memory, one-line errors for damaged files and impossible settings."""

import socket
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
import tifffile
import torch

from segmix.slides import stripped_tiff
from segmix.cli import main
from segmix.io import LOCK_FILE, folder_lock, is_temporary
from segmix.models.factory import create_segmenter, save_segmenter
from segmix.slides.slide import Slide

from interrupt import run_killed_after_first_epoch
from synthetic import write_csv_dataset
from test_slides import slide_pixels, write_slide
from test_train_cls import args_for


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_csv_dataset(tmp_path_factory.mktemp("tiles"), per_class=4, size=32)


class Planted:
    """A pickle that writes ``marker`` when it is unpickled: what a shared run folder could hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def one_line_error(capsys):
    """The one ``segmix <stage>: error: ...`` line printed (progress bars aside), no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("segmix ")]
    assert "Traceback" not in err and len(errors) == 1, err
    return errors[0]


def test_a_planted_checkpoint_is_refused_and_never_runs(dataset, tmp_path, monkeypatch, capsys):
    out, marker = tmp_path / "run", tmp_path / "planted-code-ran"
    run_killed_after_first_epoch(monkeypatch, lambda: main(args_for(dataset, out)))
    checkpoint = out / "checkpoints" / "last.pt"
    torch.save({"epoch": 0, "model": Planted(marker)}, checkpoint)
    capsys.readouterr()
    assert main(args_for(dataset, out) + ["--resume"]) == 1
    error = one_line_error(capsys)
    assert f"checkpoint {checkpoint} holds objects other than tensors" in error
    assert "--overwrite" in error and not marker.exists()

    checkpoint.write_bytes(b"PK\x03\x04 half a file")  # damaged, e.g. a full disk
    assert main(args_for(dataset, out) + ["--resume"]) == 1
    assert f"checkpoint {checkpoint} is damaged or not a PyTorch file" in one_line_error(capsys)


def test_segmix_run_refuses_a_planted_checkpoint_of_a_copied_run(dataset, tmp_path, monkeypatch,
                                                                 capsys):
    from test_pipeline import TINY_MODELS, cli

    out, marker = tmp_path / "run", tmp_path / "planted-code-ran"
    settings = ["data.classes=[A, B, C]", f"data.train.path={dataset}", f"data.val.path={dataset}",
                *TINY_MODELS]
    run_killed_after_first_epoch(monkeypatch, lambda: cli("run", out, settings))
    torch.save({"epoch": 0, "model": Planted(marker)}, out / "classifier" / "checkpoints" / "last.pt")
    capsys.readouterr()
    assert cli("run", out, settings) == 1  # `segmix run` resumes by itself
    assert "holds objects other than tensors" in capsys.readouterr().err
    assert not marker.exists()


def test_planted_and_damaged_model_files_give_one_line(tmp_path, capsys):
    marker = tmp_path / "planted-code-ran"
    planted, damaged = tmp_path / "planted.pt", tmp_path / "damaged.pt"
    torch.save({"arch": "Unet", "state_dict": Planted(marker)}, planted)
    damaged.write_bytes(b"\x80\x04 not a model")
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "tile.tif", np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    for model, message in ((planted, "holds objects other than tensors"),
                           (damaged, "is damaged or not a PyTorch file")):
        assert main(["predict", "--model", str(model), "--set", f"input={images}",
                     "--output-dir", str(tmp_path / model.stem)]) == 1
        error = one_line_error(capsys)
        assert str(model) in error and message in error
    assert not marker.exists()


HOLDER = textwrap.dedent("""
    import sys, time
    from segmix.io import folder_lock
    with folder_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
""")


def test_a_second_run_into_a_held_folder_is_refused_and_a_killed_holder_blocks_nothing(
        dataset, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(args_for(dataset, out)) == 1
        error = one_line_error(capsys)
        assert f"{out} is in use by another segmix run" in error
        assert f"pid {holder.pid} on host {socket.gethostname()}" in error
        assert not (out / "classifier.pt").exists() and not (out / "config.yaml").exists()
    finally:
        holder.kill()  # kill -9: no clean-up runs in the holder
        holder.wait()
    assert (out / LOCK_FILE).exists()  # left behind by the killed holder...
    assert main(args_for(dataset, out)) == 0  # ...and it blocks nothing
    with folder_lock(out), folder_lock(out):  # re-entrant within one process
        pass


def test_temporaries_of_a_killed_slide_prediction_are_removed_and_ignored(tmp_path, capsys):
    slides = tmp_path / "slides"
    write_slide(slides / "s1.tif", slide_pixels(width=2048, height=1536))
    model = tmp_path / "segmenter.pt"
    torch.manual_seed(0)
    save_segmenter(model, create_segmenter("Unet", "tu-test_efficientnet", 3), arch="Unet",
                   encoder="tu-test_efficientnet", classes=["A", "B"], image_size=(64, 64),
                   extra={"mpp": 2.0})
    out = tmp_path / "predictions"
    command = ["predict", "--model", str(model), "--output-dir", str(out), "--set",
               f"input={slides}", "--set", "predict.slides=true", "--set", "predict.block=256"]
    assert main(command) == 0
    masks = out / "masks"
    # what kill -9 in the middle of writing s1's mask leaves: the TIFF's and the levels' temporaries
    (out / "summary.json").unlink()
    (masks / "s1.tiff").unlink()
    (masks / ".s1.k2j4h1.tmp.tiff").write_bytes(b"II*\x00 half a tiff")
    (masks / ".levels.x81ka.tmp").mkdir()
    (masks / ".levels.x81ka.tmp" / "level1.raw").write_bytes(bytes(100))
    assert main(command) == 0
    assert (masks / "s1.tiff").is_file()
    assert not [path for path in out.rglob("*") if is_temporary(path)]
    (masks / ".s1.7fq1x.tmp.tiff").write_bytes(b"II*\x00 half a tiff")  # one a writer holds now
    assert main(["export-geojson", "--output-dir", str(tmp_path / "geojson"), "--set",
                 f"masks={masks}"]) == 0  # readers skip temporaries
    assert [p.name for p in (tmp_path / "geojson").glob("*.geojson")] == ["s1.geojson"]


def test_slide_prediction_skips_a_bad_slide_when_asked(tmp_path, capsys):
    slides = tmp_path / "slides"
    write_slide(slides / "good.tif", slide_pixels(width=2048, height=1536))
    (slides / "bad.svs").write_text("not a slide")
    model = tmp_path / "segmenter.pt"
    save_segmenter(model, create_segmenter("Unet", "tu-test_efficientnet", 3), arch="Unet",
                   encoder="tu-test_efficientnet", classes=["A", "B"], image_size=(64, 64),
                   extra={"mpp": 2.0})
    command = ["predict", "--model", str(model), "--set", f"input={slides}", "--set",
               "predict.slides=true", "--set", "predict.block=256"]
    assert main(command + ["--output-dir", str(tmp_path / "a")]) == 1
    assert "bad.svs is not a slide" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="skipped 1 unreadable slide"):
        assert main(command + ["--output-dir", str(tmp_path / "b"), "--set",
                               "predict.on_bad_file=skip"]) == 0
    assert (tmp_path / "b" / "masks" / "good.tiff").is_file()


@pytest.mark.parametrize("storage", [{"rowsperstrip": 32, "compression": "zlib"},
                                     {"rowsperstrip": 3072}])  # uncompressed, one strip
def test_a_plain_tiff_is_read_by_strips_in_bounded_memory(tmp_path, monkeypatch, storage):
    rng = np.random.default_rng(0)
    pixels = np.repeat(np.repeat(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), 32, 0), 32, 1)
    path = tmp_path / "plain.tif"  # 4096 x 3072: 36 MB of RGB
    tifffile.imwrite(path, pixels, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER", **storage)
    monkeypatch.setattr(stripped_tiff, "CACHE_BYTES", 2**20)
    monkeypatch.setattr(stripped_tiff, "RAW_BAND_ROWS", 64)
    with Slide(path) as slide:  # mpp from the TIFF's resolution tags
        assert slide.mpp == pytest.approx(0.5) and slide.dimensions == (4096, 3072)
        np.testing.assert_array_equal(slide.read(1000, 2000, 300, 200, 0.5),
                                      pixels[2000:2200, 1000:1300])
        edge = slide.read(4000, 3000, 200, 200, 0.5)  # outside the image is white
        np.testing.assert_array_equal(edge[:72, :96], pixels[3000:, 4000:])
        assert (edge[72:] == 255).all() and (edge[:, 96:] == 255).all()
        tracemalloc.start()
        thumbnail = slide.thumbnail(16.0, band_pixels=2**19)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert thumbnail.shape == (96, 128, 3)
    np.testing.assert_allclose(thumbnail.astype(float), pixels[16::32, 16::32].astype(float),
                               atol=2)  # each 32 px block is one colour
    assert peak < pixels.nbytes / 4, f"peak {peak / 2**20:.1f} MiB for a {pixels.nbytes / 2**20:.0f} MiB image"


def test_impossible_settings_are_refused_before_anything_runs(dataset, tmp_path, capsys):
    cases = (("train.device=cuda:7", "train.device: 'cuda:7' requested but"),
             ("train.lr=.nan", "train.lr must be a positive number, got nan"),
             ("train.weight_decay=.inf", "train.weight_decay must be a number >= 0, got inf"))
    if torch.cuda.is_available() and torch.cuda.device_count() > 7:
        cases = cases[1:]
    for setting, message in cases:
        out = tmp_path / setting.split("=")[0]
        assert main(args_for(dataset, out, setting)) == 2
        assert message in one_line_error(capsys)
        assert not out.exists()
