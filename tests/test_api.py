"""segmix.api: stage calls equal the CLI's, partial configs, keyword overrides and clear errors."""

import csv

import pytest
import torch
import yaml

from segmix import api
from segmix.cli import main
from segmix.config import ConfigError, save_config
from segmix.stages import STAGES, OutputDirError, get_stage, prepare_output_dir
from segmix.stages.pipeline import stage_config

from synthetic import write_csv_dataset

TIMING = {"images_per_s", "train_seconds"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_csv_dataset(tmp_path_factory.mktemp("tiles"), per_class=8, size=32)


def tiny_config(csv_path):
    """A partial config: only what differs from the stage's defaults."""
    return {"data": {"classes": ["A", "B", "C"], "image_size": 32,
                     "train": {"path": str(csv_path)}, "val": {"path": str(csv_path)}},
            "model": {"name": "test_efficientnet", "weights": None},
            "augment": {"curriculum": {"patch_sizes": [16, 8], "warmup_epochs": 0}},
            "train": {"epochs": 2, "batch_size": 4, "num_workers": 0}}


def rows_without_timing(path):
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


def test_every_stage_has_a_function():
    for stage in STAGES:
        function = getattr(api, stage.name.replace("-", "_"))
        assert stage.name in function.__doc__
        assert function.__name__ in api.__all__


def test_a_stage_call_equals_the_cli(dataset, tmp_path):
    config_file = tmp_path / "tiny.yaml"
    config = tiny_config(dataset)
    config_file.write_text(yaml.safe_dump(config))
    assert main(["train-cls", "--config", str(config_file), "--output-dir", str(tmp_path / "cli"),
                 "--set", "train.lr=0.002"]) == 0
    result = api.train_cls(config, output_dir=tmp_path / "api", train={"lr": 0.002})

    assert rows_without_timing(tmp_path / "cli" / "metrics.csv") == \
        rows_without_timing(tmp_path / "api" / "metrics.csv")
    cli_state = torch.load(tmp_path / "cli" / "classifier.pt", weights_only=True)["state_dict"]
    api_state = torch.load(tmp_path / "api" / "classifier.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(cli_state[k], api_state[k]) for k in cli_state)
    saved = [yaml.safe_load((tmp_path / run / "config.yaml").read_text()) for run in ("cli", "api")]
    assert {**saved[0], "output_dir": None} == {**saved[1], "output_dir": None}
    assert saved[1]["train"]["lr"] == 0.002 and saved[1]["train"]["eval_batch_size"] == 64

    assert result.stage == "train-cls" and result.output_dir == tmp_path / "api"
    assert result.metrics["epoch"] == 1 and 0 <= result.metrics["val_accuracy"] <= 1
    assert {"classifier.pt", "model", "metrics.csv", "metrics.png", "config.yaml"} <= set(result.files)
    assert result.files["classifier.pt"] == tmp_path / "api" / "classifier.pt"
    assert result.config["train"]["lr"] == 0.002


def test_overrides_layer_in_order(dataset, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({**tiny_config(dataset), "cam": {"method": "gradcam"}}))
    config = api.resolve_config("train-cls", [base, {"train": {"epochs": 5}}],
                                overrides=["train.batch_size=8"], output_dir=tmp_path / "x",
                                **{"train.epochs": 7, "model": {"drop_rate": 0.1}})
    assert config["train"]["epochs"] == 7  # keyword after the dict
    assert config["train"]["batch_size"] == 8 and config["train"]["num_workers"] == 0
    assert config["model"] == {"name": "test_efficientnet", "pretrained": False, "weights": None,
                               "drop_rate": 0.1}
    assert "cam" not in config  # another stage's section in a shared file is skipped
    assert config["output_dir"] == str(tmp_path / "x")


def test_the_runs_seed_reaches_every_seeded_section(dataset, tmp_path):
    run = api.resolve_config("run", tiny_config(dataset), overrides=["seed=3"])
    assert run["cam"]["seed"] == 3 and run["localiser"]["seed"] == 3
    pinned = api.resolve_config("run", tiny_config(dataset),
                                overrides=["seed=3", "localiser.seed=0"])
    assert pinned["localiser"]["seed"] == 0 and pinned["cam"]["seed"] == 3
    localise = get_stage("localise")
    assert stage_config(localise, run, tmp_path, ["train"])["localiser"]["seed"] == 3
    cams = api.resolve_config("cams", tiny_config(dataset), overrides=["seed=2"])
    assert cams["cam"]["seed"] == 2

    # A folder saved before the sections followed the run's seed (an explicit 0) continues.
    folder = tmp_path / "localiser"
    folder.mkdir()
    old = api.resolve_config("localise", tiny_config(dataset), output_dir=folder)
    save_config({**old, "localiser": {**old["localiser"], "seed": 0}}, folder / "config.yaml")
    (folder / "fit.pt").write_bytes(b"work")
    prepare_output_dir(localise.load(), old, folder, overwrite=False)
    seed_1 = api.resolve_config("localise", tiny_config(dataset), output_dir=folder,
                                overrides=["seed=1"])
    with pytest.raises(OutputDirError, match="localiser.seed: 0 -> 1"):
        prepare_output_dir(localise.load(), seed_1, folder, overwrite=False)


def test_bad_calls_name_the_problem(dataset, tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'.*valid keys here"):
        api.train_cls(tiny_config(dataset), output_dir=tmp_path / "a", **{"train.epoch": 3})
    with pytest.raises(ConfigError, match="train.lr must be a positive number"):
        api.train_cls(tiny_config(dataset), output_dir=tmp_path / "b", train={"lr": -1})
    with pytest.raises(ConfigError, match="unknown stage 'train'"):
        api.run_stage("train", tiny_config(dataset))
    with pytest.raises(ConfigError, match="data.train.path is not set"):
        api.train_cls({"data": {"classes": ["A", "B"]}})
    with pytest.raises(ConfigError, match="resume and overwrite exclude each other"):
        api.train_cls(tiny_config(dataset), output_dir=tmp_path / "c", resume=True, overwrite=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
