"""Dataset readers, mask conventions, augmentation pipelines and bad-input errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from segmix.data import (
    DatasetError,
    TileDataset,
    build_transform,
    dataset_classes,
    parse_filename_label,
    read_class_folders,
    read_csv,
    read_filename_labels,
    read_mask,
    read_split,
    resolve_problems,
    verify_files,
)

from segmix.labels import MaskConvention, decode_mask

from synthetic import write_csv_dataset

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def save_png(path, array, palette=False):
    """A PNG; with ``palette`` a palette ("P") image whose indices are the array's values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array.astype(np.uint8))
    if palette:
        image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])  # L -> P
        assert image.mode == "P"
    image.save(path)


def rgb(size=16, value=128):
    return np.full((size, size, 3), value, np.uint8)


def test_csv_reader_splits_multi_labels_and_relative_paths(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        save_png(tmp_path / "img" / name, rgb())
    (tmp_path / "labels.csv").write_text(
        "image,mask,label,split\n"
        "img/a.png,,Tumour,train\n"
        "img/b.png,,Tumour;stroma,train\n"  # several labels; case-insensitive match
        "img/c.png,,Stroma,val\n")
    result = read_csv(tmp_path / "labels.csv", ["Tumour", "Stroma"], split="train")
    assert not result.problems
    assert [s.labels for s in result.samples] == [(0,), (0, 1)]
    assert result.samples[0].image == tmp_path / "img" / "a.png"
    assert result.samples[0].mask is None
    assert len(read_csv(tmp_path / "labels.csv", ["Tumour", "Stroma"]).samples) == 3


def test_csv_reader_reports_every_bad_row(tmp_path):
    save_png(tmp_path / "ok.png", rgb())
    (tmp_path / "labels.csv").write_text(
        "image,mask,label\n"
        "ok.png,,A\n"
        "ok.png,,Lymph\n"
        "ok.png,,\n"
        "ok.png,,;\n"
        ",,A\n")
    result = read_csv(tmp_path / "labels.csv", ["A", "B"])
    reasons = [str(p) for p in result.problems]
    assert len(result.samples) == 1 and len(reasons) == 4
    assert "line 3: unknown class name(s) ['Lymph']; configured classes: ['A', 'B']" in reasons[0]
    assert "line 4: label '' parses to no class" in reasons[1]
    assert "line 5: label ';' parses to no class" in reasons[2]
    assert "line 6: empty image path" in reasons[3]


def test_csv_reader_missing_file_and_columns(tmp_path):
    assert "CSV file not found" in str(read_csv(tmp_path / "none.csv", ["A"]).problems[0])
    (tmp_path / "x.csv").write_text("path,class\nx.png,A\n")
    problem = str(read_csv(tmp_path / "x.csv", ["A"]).problems[0])
    assert "missing column(s) ['image', 'label']" in problem
    (tmp_path / "y.csv").write_text("image,label\nx.png,A\n")
    assert "missing column(s) ['split']" in str(read_csv(tmp_path / "y.csv", ["A"], "val").problems[0])


def test_verify_finds_missing_truncated_and_unreadable_files(tmp_path):
    save_png(tmp_path / "good.png", rgb())
    save_png(tmp_path / "full.png", rgb(64) + np.random.default_rng(0).integers(0, 50, (64, 64, 3)).astype(np.uint8))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    save_png(tmp_path / "nomask.png", rgb())
    (tmp_path / "labels.csv").write_text(
        "image,mask,label\n"
        "good.png,,A\n"
        "truncated.png,,A\n"
        "garbage.png,,A\n"
        "missing.png,,A\n"
        "nomask.png,absent_mask.png,A\n")
    result = verify_files(read_csv(tmp_path / "labels.csv", ["A"]), progress=False)
    assert [s.image.name for s in result.samples] == ["good.png"]
    reasons = {p.path.split("/")[-1]: p.reason for p in result.problems}
    assert "truncated" in reasons["truncated.png"]
    assert "not a readable image" in reasons["garbage.png"]
    assert "file not found" in reasons["missing.png"]
    assert "file not found" in reasons["absent_mask.png"]
    # a bad file names the CSV line that lists it
    assert reasons["missing.png"].endswith(f"(listed at {tmp_path / 'labels.csv'} line 5)")
    assert reasons["absent_mask.png"].endswith("labels.csv line 6)")

    with pytest.raises(DatasetError, match="4 bad file"):
        resolve_problems(result, "data.train", "raise")
    with pytest.warns(UserWarning, match="skipped 4 bad file.*kept 1"):
        kept = resolve_problems(result, "data.train", "skip")
    assert len(kept) == 1


def test_empty_dataset_is_an_error(tmp_path):
    (tmp_path / "labels.csv").write_text("image,label\n")
    with pytest.raises(DatasetError, match="the dataset is empty"):
        resolve_problems(read_csv(tmp_path / "labels.csv", ["A"]), "data.train", "skip")


@pytest.mark.parametrize(
    "name, expected",
    [("1031280-2300-27920-[1 0 0 1]", (0, 3)), ("TCGA-A1-0001[1101]", (0, 1, 3)),
     ("x-[0, 1, 0, 0]", (1,))],
)
def test_parse_filename_labels(name, expected):
    assert parse_filename_label(name, 4) == expected


@pytest.mark.parametrize(
    "name, message",
    [("plain", "no \\[0/1 ...\\] label"), ("x[0000]", "parses to no class"),
     ("x[101]", "has 3 entries, expected 4")],
)
def test_parse_filename_label_errors(name, message):
    with pytest.raises(ValueError, match=message):
        parse_filename_label(name, 4)


def test_luad_reader_with_palette_masks(tmp_path):
    save_png(tmp_path / "img" / "t1-[1 0 0 1].png", rgb())
    save_png(tmp_path / "img" / "t2-[0 0 0 0].png", rgb())
    save_png(tmp_path / "img" / "t3-[0 1 0 0].png", rgb())
    mask = np.full((16, 16), 4)  # 4 = background in LUAD-HistoSeg
    mask[:8] = 0                 # TE
    mask[8:, :4] = 3             # TAS
    save_png(tmp_path / "mask" / "t1-[1 0 0 1].png", mask, palette=True)
    result = read_filename_labels(tmp_path / "img", ["TE", "NEC", "LYM", "TAS"], tmp_path / "mask")
    assert [s.labels for s in result.samples] == [(0, 3)]
    reasons = {p.path.split("/")[-1]: p.reason for p in result.problems}
    assert "missing mask" in reasons["t3-[0 1 0 0].png"]
    assert "parses to no class" in reasons["t2-[0 0 0 0].png"]
    raw = read_mask(result.samples[0].mask)
    assert raw.max() == 4  # palette indices, not colours
    decoded = decode_mask(raw, (0, 3), 4, MaskConvention("index", background_value=4,
                                                         first_class_value=0), result.samples[0].mask)
    assert (decoded[:8] == 1).all() and (decoded[8:, :4] == 4).all() and (decoded[8:, 4:] == 0).all()


def test_bcss_reader_without_masks(tmp_path):
    save_png(tmp_path / "a[1101].png", rgb())
    save_png(tmp_path / "b[0010].png", rgb())
    result = read_filename_labels(tmp_path, ["TUM", "STR", "LYM", "NEC"])
    assert [s.labels for s in result.samples] == [(0, 1, 3), (2,)]


def test_class_folder_reader(tmp_path):
    save_png(tmp_path / "tumour" / "a.png", rgb())
    save_png(tmp_path / "Stroma" / "b.jpg", rgb())
    save_png(tmp_path / "other" / "c.png", rgb())
    result = read_class_folders(tmp_path, ["Tumour", "Stroma"])
    assert sorted((s.image.name, s.labels) for s in result.samples) == [("a.png", (0,)), ("b.jpg", (1,))]
    assert "folder is not a configured class" in str(result.problems[0])


def test_mask_conventions_and_errors(tmp_path):
    raw = np.array([[0, 1], [255, 3]])
    binary = decode_mask(np.array([[0, 1], [1, 0]]), (2,), 3, MaskConvention("binary"), tmp_path)
    assert binary.tolist() == [[0, 3], [3, 0]]
    index = decode_mask(raw, (0, 2), 3, MaskConvention("index"), tmp_path)
    assert index.tolist() == [[0, 1], [255, 3]]
    with pytest.raises(ValueError, match="binary mask needs exactly one image-level class"):
        decode_mask(raw, (0, 1), 3, MaskConvention("binary"), tmp_path / "m.png")
    with pytest.raises(ValueError, match=r"mask values \[7\] are neither background"):
        decode_mask(np.array([[7]]), (0,), 3, MaskConvention("index"), tmp_path / "m.png")
    with pytest.raises(ValueError, match="unknown mask convention"):
        MaskConvention("rgb")


def test_same_augmentation_moves_image_and_mask(tmp_path):
    csv = write_csv_dataset(tmp_path, per_class=1, size=32)
    samples = read_csv(csv, ["A", "B", "C"]).samples
    flip = build_transform([{"name": "HorizontalFlip", "p": 1.0}], (32, 32), MEAN, STD)
    plain = build_transform([], (32, 32), MEAN, STD)
    convention = MaskConvention("binary")
    flipped = TileDataset(samples, 3, flip, convention)[1]
    original = TileDataset(samples, 3, plain, convention)[1]
    assert torch.equal(flipped["mask"], original["mask"].flip(-1))
    assert torch.allclose(flipped["image"], original["image"].flip(-1))
    assert original["mask"].dtype == torch.long and set(original["mask"].unique().tolist()) == {0, 2}
    assert original["target"].tolist() == [0.0, 1.0, 0.0]
    assert original["image"].shape == (3, 32, 32)


def test_transform_errors():
    with pytest.raises(ValueError, match="unknown albumentations transform 'HorizontalFlipp'.*HorizontalFlip"):
        build_transform([{"name": "HorizontalFlipp"}], (32, 32), MEAN, STD)
    with pytest.raises(ValueError, match="augmentation RandomRotate90"):
        build_transform([{"name": "RandomRotate90", "angle": 3}], (32, 32), MEAN, STD)
    with pytest.raises(ValueError, match="must be a mapping with a 'name'"):
        build_transform(["HorizontalFlip"], (32, 32), MEAN, STD)


def test_read_split_and_classes_from_config(tmp_path):
    csv = write_csv_dataset(tmp_path, per_class=4, size=16)
    data = {"format": "csv", "classes": ["A", "B", "C"], "train": {"path": str(csv), "split": "train"},
            "val": {"path": str(csv), "split": "val"}, "on_bad_file": "raise", "verify_files": True}
    assert len(read_split(data, "train", progress=False)) == 9
    assert len(read_split(data, "val", progress=False)) == 3
    assert dataset_classes({"format": "luad", "classes": []}) == ["TE", "NEC", "LYM", "TAS"]
    with pytest.raises(ValueError, match="must not contain 'background'"):
        dataset_classes({"format": "csv", "classes": ["Background", "A"]})
    with pytest.raises(ValueError, match="unknown data.format 'parquet'"):
        read_split({**data, "format": "parquet"}, "train")
    with pytest.raises(DatasetError, match="unknown class name"):
        read_split({**data, "classes": ["A", "B"]}, "train", progress=False)
