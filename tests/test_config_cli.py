"""Tests of config loading/overrides, atomic writes and the segmix command."""

import json
import subprocess
import sys

import pytest
import yaml

from segmix import __version__
from segmix.cli import main
from segmix.config import ConfigError, apply_overrides, load_config, merge, save_config
from segmix.io import atomic_path, atomic_write_text

DEFAULTS = {"output_dir": "out", "epochs": 2, "shuffle": {"patch_size": 32, "modes": ["batch"]},
            "extra": None}


def test_merge_and_overrides():
    config = merge(DEFAULTS, {"shuffle": {"patch_size": 16}})
    assert config["shuffle"] == {"patch_size": 16, "modes": ["batch"]}
    config = apply_overrides(config, ["epochs=5", "shuffle.modes=[self, random]", "extra={a: 1}"])
    assert config["epochs"] == 5 and config["shuffle"]["modes"] == ["self", "random"]
    assert config["extra"] == {"a": 1}
    assert DEFAULTS["epochs"] == 2  # defaults untouched


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["shuffle.patchsize=16"], "unknown config key 'shuffle.patchsize'; valid keys here: modes, patch_size"),
        (["epochs"], "must look like key.sub=value"),
        (["shuffle=3"], "config key 'shuffle' must be a mapping"),
        (["epochs=[1"], "value is not valid YAML"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(DEFAULTS, overrides)


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml", DEFAULTS)
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(bad, DEFAULTS)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(listing, DEFAULTS)
    typo = tmp_path / "typo.yaml"
    typo.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="typo.yaml: unknown config key 'epoch'"):
        load_config(typo, DEFAULTS)


def test_save_and_load_round_trip(tmp_path):
    config = apply_overrides(DEFAULTS, ["epochs=7"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml", DEFAULTS) == config


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "result.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.txt"]


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"segmix {__version__}"
    assert main([]) == 0
    assert "shuffle-demo" in capsys.readouterr().out


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "segmix.cli", "--version"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"segmix {__version__}"


def test_shuffle_demo_writes_outputs_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["shuffle-demo", "--output-dir", str(out), "--set", "tile_size=64",
            "--set", "shuffle.patch_size=16", "--set", "curriculum.epochs=4"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["modes"]) == {"batch", "group", "random", "self"}
    assert all(m["exact_inverse"] for m in summary["modes"].values())
    assert summary["modes"]["self"]["mean_label_change"] == 0
    assert summary["modes"]["batch"]["mean_label_change"] > 0
    for mode in summary["modes"]:
        assert (out / f"shuffle_{mode}.png").stat().st_size > 1000
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["tile_size"] == 64 and saved["output_dir"] == str(out)
    assert len(summary["curriculum_plan"]) == 4

    assert main(args) == 1
    assert "exists: this run is finished" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_cli_reports_config_errors(tmp_path, capsys):
    assert main(["shuffle-demo", "--output-dir", str(tmp_path), "--set", "tile_sise=64"]) == 2
    assert "unknown config key 'tile_sise'" in capsys.readouterr().err
    assert main(["shuffle-demo", "--output-dir", str(tmp_path), "--set", "tile_size=100",
                 "--set", "shuffle.patch_size=16"]) == 2  # validated before anything runs
    assert "height 100 is not a multiple of patch height 16" in capsys.readouterr().err


def test_one_file_serves_several_stages(tmp_path):
    foreign = ["model", "train"]
    path = tmp_path / "all.yaml"
    path.write_text("epochs: 3\nmodel: {name: x}\ntrain: {lr: 0.1}\n")
    assert load_config(path, DEFAULTS, foreign)["epochs"] == 3
    path.write_text("epochs: 3\nmodle: {name: x}\n")
    with pytest.raises(ConfigError, match="unknown config key 'modle'"):
        load_config(path, DEFAULTS, foreign)


def test_every_shipped_config_loads_for_every_stage():
    from pathlib import Path

    from segmix.stages import STAGES

    root = Path(__file__).resolve().parent.parent / "configs"
    configs = sorted(root.glob("*.yaml"))
    arms = sorted((root / "ebhi_wsss").glob("*.yaml"))  # layered over ebhi.yaml
    stages = [stage.load() for stage in STAGES]
    all_keys = {key for stage in stages for key in stage.DEFAULTS}
    assert configs and len(arms) == 5
    for stage in stages:
        foreign = all_keys - set(stage.DEFAULTS)
        for path in configs:
            load_config(path, stage.DEFAULTS, foreign)
        base = load_config(root / "ebhi.yaml", stage.DEFAULTS, foreign)
        for path in arms:
            load_config(path, base, foreign)


def test_config_files_layer_in_order(tmp_path):
    from segmix.cli import main

    (tmp_path / "a.yaml").write_text("tile_size: 64\nseed: 3\n")
    (tmp_path / "b.yaml").write_text("seed: 5\n")
    out = tmp_path / "out"
    assert main(["shuffle-demo", "--config", str(tmp_path / "a.yaml"), "--config",
                 str(tmp_path / "b.yaml"), "--output-dir", str(out), "--set", "shuffle.patch_size=16"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["tile_size"] == 64 and saved["seed"] == 5 and saved["shuffle"]["patch_size"] == 16


def test_scientific_notation_is_a_number_in_files_and_overrides(tmp_path):
    defaults = {"train": {"lr": 0.001, "name": "x"}}
    assert apply_overrides(defaults, ["train.lr=1e-4"])["train"]["lr"] == 1e-4
    assert apply_overrides(defaults, ["train.name=1e5x"])["train"]["name"] == "1e5x"
    (tmp_path / "c.yaml").write_text("train:\n  lr: 3E-5\n")
    assert load_config(tmp_path / "c.yaml", defaults)["train"]["lr"] == 3e-5
