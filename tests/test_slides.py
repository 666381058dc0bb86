"""Whole-slide images: slides written here from real tissue (scikit-image's IHC image) as
pyramidal TIFFs, tiled, trained on, predicted, exported to GeoJSON and read back; bad slides."""

import csv
import json
import sys

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image
from skimage import data as skdata

from pseudo_masks.tissue import thumbnail_tissue_mask
from segmix.cli import main
from segmix.data import read_mask_png
from segmix.slides.geojson import geojson_to_mask, mask_to_geojson
from segmix.slides.masks import read_mask_pyramid, write_mask_pyramid
from segmix.slides.slide import Slide, SlideError

MPP = 0.5
TINY = ["model.name=test_efficientnet", "model.weights=null", "augment.curriculum.patch_sizes=[32, 16]",
        "train.epochs=2", "train.batch_size=4", "train.num_workers=0", "cam.target_layers=null",
        "cam.num_workers=0", "segmenter.encoder=tu-test_efficientnet",
        "segmenter.encoder_weights=null", "seg_augment.curriculum.patch_sizes=[32, 16]",
        "seg_train.epochs=1", "seg_train.batch_size=4", "seg_train.num_workers=0"]


def slide_pixels(tissue=True, width=3072, height=2048):
    """Glass with two copies of the real IHC image (512 x 512 px)."""
    image = skdata.immunohistochemistry()
    pixels = np.full((height, width, 3), 242, np.uint8)
    if tissue:
        pixels[256:768, 256:768] = image
        pixels[1024:1536, 1536:2048] = image[::-1]
    return pixels


def write_slide(path, pixels, mpp=MPP, levels=3):
    """A tiled pyramidal TIFF as scanners write them; ``mpp=None`` leaves the resolution out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as tif:
        for level in range(levels):
            scale = 2 ** level
            extra = {} if mpp is None else {"resolution": (1e4 / (mpp * scale),) * 2,
                                            "resolutionunit": "CENTIMETER"}
            tif.write(pixels[::scale, ::scale], tile=(256, 256), photometric="rgb",
                      compression="zlib", subfiletype=1 if level else 0, **extra)
    return path


def cli(command, out, settings, *flags):
    return main([command, "--output-dir", str(out), *[a for s in settings for a in ("--set", s)],
                 *flags])


def test_slides_open_at_their_mpp_and_read_any_resolution(tmp_path):
    pixels = slide_pixels()
    with Slide(write_slide(tmp_path / "s.tif", pixels)) as slide:
        assert slide.dimensions == (3072, 2048) and slide.mpp == pytest.approx(MPP)
        assert slide.level_for(1.0) == 1 and slide.level_for(0.7) == 0 and slide.level_for(8) == 2
        region = slide.read(256, 256, 512, 512, 1.0)  # 1 mpp: level 1, 256 px
        assert region.shape == (256, 256, 3)
        np.testing.assert_array_equal(region, pixels[256:768:2, 256:768:2])
        assert slide.size_at(2.0) == (768, 512)
        outside = slide.read(-64, -64, 64, 64, MPP)
        assert (outside == 255).all()  # beyond the slide is white, as glass
    png = tmp_path / "plain.png"
    Image.fromarray(pixels[:600, :700]).save(png)  # a plain image goes the same way, given its mpp
    with pytest.raises(SlideError, match="has no resolution in its metadata.*--mpp"):
        Slide(png)
    with Slide(png, mpp=0.25) as slide:
        assert slide.mpp == 0.25 and slide.read(0, 0, 100, 100, 0.5).shape == (50, 50, 3)


def test_tissue_is_found_and_glass_is_empty():
    pixels = slide_pixels()[::16, ::16]
    mask = thumbnail_tissue_mask(pixels)
    assert mask[16:48, 16:48].mean() > 0.3 and not mask[:, 140:].any() and not mask[:12].any()
    assert not thumbnail_tissue_mask(slide_pixels(tissue=False)[::16, ::16]).any()


def test_mask_pyramid_round_trip_and_opens_in_openslide(tmp_path):
    import openslide

    height, width = 1300, 2100
    mask = (np.add.outer(np.arange(height) // 200, np.arange(width) // 300) % 3).astype(np.uint8)
    bands = (mask[top:top + 512] for top in range(0, height, 512))
    path = write_mask_pyramid(tmp_path / "m.tiff", bands, width, height, classes=["a", "b"],
                              mpp=2.0, extra={"slide_scale": 4.0})
    back, meta = read_mask_pyramid(path)
    np.testing.assert_array_equal(back, mask)
    assert meta["classes"] == ["a", "b"] and meta["slide_scale"] == 4.0
    np.testing.assert_array_equal(read_mask_pyramid(path, 2)[0], mask[::4, ::4])
    slide = openslide.open_slide(str(path))
    assert slide.level_count == 4 and slide.level_dimensions[0] == (width, height)
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(2.0)
    assert tuple(np.asarray(slide.read_region((350, 10), 0, (1, 1)))[0, 0, :3]) == (230, 25, 75)
    assert [p.name for p in tmp_path.iterdir()] == ["m.tiff"]  # no temporary level files left
    with pytest.raises(ValueError, match="the bands hold 512 rows, the mask 1300"):
        write_mask_pyramid(tmp_path / "short.tiff", iter([mask[:512]]), width, height,
                           classes=["a", "b"], mpp=2.0, extra={})
    assert not (tmp_path / "short.tiff").exists()


def test_geojson_polygons_with_holes_rasterise_back():
    mask = np.zeros((200, 300), np.uint8)
    mask[20:180, 20:180] = 1
    mask[60:140, 60:140] = 0  # a hole
    mask[90:110, 90:110] = 2  # an island in the hole
    mask[50:150, 200:280] = 2
    collection = mask_to_geojson(mask, ["tumour", "stroma"], [(0, 0, 0), (1, 2, 3), (4, 5, 6)],
                                 scale=4.0)
    tumour = collection["features"][0]
    assert tumour["properties"]["classification"] == {"name": "tumour", "color": [1, 2, 3]}
    assert len(tumour["geometry"]["coordinates"]) == 1 and len(tumour["geometry"]["coordinates"][0]) == 2
    assert tumour["geometry"]["coordinates"][0][0][0] == [82.0, 82.0]  # (20 + 0.5) * 4
    np.testing.assert_array_equal(geojson_to_mask(collection, mask.shape, ["tumour", "stroma"],
                                                  scale=4.0), mask)


def test_tile_train_predict_and_geojson_on_slides(tmp_path, capsys):
    slides = tmp_path / "slides"
    for name, label in (("p1", "Tissue"), ("p2", "Tissue"), ("n1", "Other"), ("n2", "Other")):
        pixels = slide_pixels()
        if label == "Other":
            pixels = pixels[..., ::-1].copy()  # another stain colour
        write_slide(slides / label / f"{name}.tif", pixels)
    write_slide(slides / "Other" / "glass.tif", slide_pixels(tissue=False))
    tiles = tmp_path / "tiles"
    assert cli("tile", tiles, [f"slides={slides}", "tile.mpp=2.0", "tile.size=64",
                               "tile.min_tissue=0.3"]) == 0
    printed = capsys.readouterr().out
    assert "no tissue tiles in 1 slide(s)" in printed and "glass.tif" in printed
    with open(tiles / "labels.csv") as handle:
        rows = [line.strip().split(",") for line in handle][1:]
    by_slide = {}
    for image, label, split, slide in rows:
        by_slide.setdefault(slide, set()).add(split)
        assert Image.open(tiles / image).size == (64, 64)
    assert set(by_slide) == {"p1", "p2", "n1", "n2"} and all(len(s) == 1 for s in by_slide.values())
    assert {"train", "val"} == set().union(*by_slide.values())  # split by slide, never by tile
    assert (tiles / "tissue" / "p1.png").is_file()
    data = yaml.safe_load((tiles / "data.yaml").read_text())["data"]
    assert data["classes"] == ["Other", "Tissue"] and data["mpp"] == 2.0 and data["image_size"] == 64
    # resumable: a second call finds every slide done
    assert cli("tile", tiles, [f"slides={slides}", "tile.mpp=2.0", "tile.size=64",
                               "tile.min_tissue=0.3"], "--overwrite") == 0

    run = tmp_path / "run"
    assert main(["run", "--config", str(tiles / "data.yaml"), "--output-dir", str(run),
                 *[a for s in TINY for a in ("--set", s)]]) == 0
    model = run / "segmenter" / "model"
    assert json.loads((model / "config.json").read_text())["mpp"] == 2.0

    predictions = tmp_path / "predictions"
    assert cli("predict", predictions, ["input=" + str(slides / "Tissue"), "predict.slides=true",
                                        "predict.block=256"], "--model", str(model)) == 0
    mask, meta = read_mask_pyramid(predictions / "masks" / "p1.tiff")
    assert mask.shape == (512, 768) and meta["slide_scale"] == pytest.approx(4.0)
    assert set(np.unique(mask)) <= {0, 1, 2} and mask.max() > 0
    assert (mask[:40] == 0).all()  # glass above the tissue stays background
    with open(predictions / "predictions.csv") as handle:
        row = next(csv.DictReader(handle))
    total = sum(float(row[f"{name}_mm2"]) for name in ("background", "Other", "Tissue"))
    assert total == pytest.approx(3072 * 2048 * (MPP / 1000) ** 2, rel=1e-6)
    assert (predictions / "overlays" / "p1.png").is_file()

    geojson = tmp_path / "geojson"
    assert cli("export-geojson", geojson, [f"masks={predictions / 'masks'}"]) == 0
    collection = json.loads((geojson / "p1.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and collection["features"]
    back = geojson_to_mask(collection, mask.shape, meta["classes"], scale=meta["slide_scale"])
    for index in np.unique(mask[mask > 0]):
        inter = np.logical_and(back == index, mask == index).sum()
        union = np.logical_or(back == index, mask == index).sum()
        assert inter / union >= 0.99

    tile_masks = tmp_path / "tile-geojson"  # PNG masks of tiles, legend one folder up
    assert cli("export-geojson", tile_masks, [f"masks={run / 'pseudo-masks' / 'masks' / 'train'}"]) == 0
    exported = sorted(tile_masks.glob("*.geojson"))
    assert len(exported) == len(list((run / "pseudo-masks" / "masks" / "train").glob("*.png")))
    first = read_mask_png(run / "pseudo-masks" / "masks" / "train" / f"{exported[0].stem}.png")
    back = geojson_to_mask(json.loads(exported[0].read_text()), first.shape, ["Other", "Tissue"])
    np.testing.assert_array_equal(back, np.where(first == 255, 0, first))

    glass = tmp_path / "glass-pred"
    assert cli("predict", glass, ["input=" + str(slides / "Other" / "glass.tif"),
                                  "predict.slides=true"], "--model", str(model)) == 0
    assert (read_mask_pyramid(glass / "masks" / "glass.tiff")[0] == 0).all()
    assert json.loads((glass / "slides" / "glass.json").read_text())["blocks_predicted"] == 0


def test_bad_slides_give_clear_errors(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "slides" / "A"
    folder.mkdir(parents=True)
    (folder / "notes.svs").write_text("not a slide")
    assert cli("tile", tmp_path / "t1", [f"slides={tmp_path / 'slides'}"]) == 1
    assert "notes.svs is not a slide or image OpenSlide can read" in capsys.readouterr().err
    (folder / "notes.svs").unlink()

    write_slide(folder / "nompp.tif", slide_pixels(), mpp=None)
    assert cli("tile", tmp_path / "t2", [f"slides={tmp_path / 'slides'}"]) == 1
    assert "nompp.tif has no resolution in its metadata: give its microns per pixel (--mpp" \
        in capsys.readouterr().err
    assert cli("tile", tmp_path / "t3", [f"slides={tmp_path / 'slides'}", "tile.size=64",
                                         "tile.mpp=2.0"], "--mpp", "0.5") == 0
    (folder / "nompp.tif").unlink()

    corrupt = write_slide(folder / "corrupt.tif", slide_pixels(), levels=1)
    with tifffile.TiffFile(corrupt) as tif:  # damage the compressed tiles of the tissue
        page = tif.pages[0]
        offsets, counts = page.dataoffsets, page.databytecounts
    raw = bytearray(corrupt.read_bytes())
    for offset, count in zip(offsets, counts):
        raw[offset:offset + count] = b"\x00" * count
    corrupt.write_bytes(bytes(raw))
    assert cli("tile", tmp_path / "t4", [f"slides={tmp_path / 'slides'}", "tile.size=64",
                                         "tile.mpp=2.0"]) == 1
    error = capsys.readouterr().err
    assert "corrupt.tif" in error and "cannot be read" in error

    monkeypatch.setitem(sys.modules, "openslide", None)
    assert cli("tile", tmp_path / "t5", [f"slides={tmp_path / 'slides'}"]) == 1
    assert 'whole-slide images need OpenSlide: install the extra with pip install' \
           ' "segmix-wsss[wsi]"' in capsys.readouterr().err
