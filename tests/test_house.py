"""The house rules, read from the code itself, and what a first-time user meets on the command line:
the core imports no stage, CLI, config or file IO; a stage never imports another stage; bad values
fail before anything runs, naming the key; ``--help`` stays light; Ctrl-C says how to go on."""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segmix.cli import main
from segmix.data import ImageReadError, read_rgb
from segmix.training.mixers import CutMix, PairParams
from segmix.shuffle import ShuffleParams, apply_params
from segmix.stages import STAGES
from segmix.training.settings import build_mixer

from interrupt import run_killed_after_first_epoch
from synthetic import write_csv_dataset

ROOT = Path(__file__).resolve().parent.parent
CORE = [ROOT / "segmix" / f"{name}.py" for name in
        ("metrics", "labels", "errors")]
# the mixers, the sliding window, and the (import-free) faces of their packages, which importing
# them runs
CORE += [ROOT / "segmix" / folder / name for folder, name in (
    ("training", "mixers.py"), ("training", "__init__.py"),
    ("models", "sliding_window.py"), ("models", "__init__.py"))]
CORE += sorted((ROOT / "segmix" / "shuffle").glob("*.py"))  # the kernel: a package of its parts
CORE += sorted((ROOT / "segmix" / "curriculum").glob("*.py"))  # the curriculum: ladder, controller
CORE += sorted((ROOT / "cam").glob("*.py")) + sorted((ROOT / "pseudo_masks").glob("*.py"))
PARTS = {f"segmix.{package}.{path.stem}" for package in ("shuffle", "curriculum")
         for path in (ROOT / "segmix" / package).glob("*.py")}
CORE_SEGMIX = {"segmix", "segmix.shuffle", "segmix.curriculum", "segmix.training.mixers",
               "segmix.models.sliding_window", "segmix.metrics", "segmix.labels", "segmix.errors",
               *PARTS}
# torch, NumPy and scikit-image; pydensecrf is the optional CRF backend, imported where it is used.
CORE_THIRD_PARTY = {"torch", "numpy", "skimage", "pydensecrf", "cam", "pseudo_masks"}


def imported_modules(path: Path):
    """Every module a file imports (relative imports resolved), with the line it is on."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if node.module:
                yield base, node.lineno
            else:  # from . import name: each name may be a module
                for alias in node.names:
                    yield f"{base}.{alias.name}", node.lineno


def test_core_modules_import_only_torch_numpy_skimage_and_the_core():
    offences = []
    for path in CORE:
        for module, line in imported_modules(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in CORE_THIRD_PARTY:
                continue
            if top == "segmix" and module in CORE_SEGMIX:
                continue
            offences.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
        calls = [node.func.id for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
        offences += [f"{path.relative_to(ROOT)} calls {name}()" for name in ("print", "open")
                     if name in calls]
    assert not offences, "core modules must not reach files, config, stages or the CLI:\n" + \
        "\n".join(offences)


def test_a_stage_never_imports_another_stage():
    stage_modules = {stage.module_name for stage in STAGES}
    offences = []
    for stage in STAGES:
        path = ROOT / Path(*stage.module_name.split(".")).with_suffix(".py")
        for module, line in imported_modules(path):
            if module in stage_modules and module != stage.module_name:
                offences.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not offences, "\n".join(offences)


# Only the registry and the orchestration load stage modules and run them.
STAGE_RUNNERS = {ROOT / "segmix" / "stages" / "__init__.py", ROOT / "segmix" / "stages" / "pipeline.py"}


def dynamic_stage_calls(source: str) -> list:
    """The places where ``source`` reaches a stage at run time instead of through the
    orchestration: importlib / ``__import__``, the registry's ``get_stage`` / ``STAGES`` /
    ``pipeline_stages``, or a ``.load()`` of a stage."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [getattr(node, "module", None) or ""] + [alias.name for alias in node.names]
            found += [(node.lineno, name) for name in names
                      if name and name.split(".")[0] == "importlib" or name in
                      ("import_module", "get_stage", "STAGES", "pipeline_stages")]
        elif isinstance(node, ast.Name) and node.id == "__import__":
            found.append((node.lineno, "__import__"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "load" and not node.args and not node.keywords):
            found.append((node.lineno, ".load()"))
    return found


def test_the_dynamic_call_check_sees_each_way_of_running_a_stage():
    planted = ("import importlib\nfrom importlib import import_module\nfrom . import get_stage\n"
               "module = get_stage('cams').load()\n__import__('segmix.stages.cams')\n")
    assert [name for _, name in dynamic_stage_calls(planted)] == [
        "importlib", "importlib", "import_module", "get_stage", ".load()", "__import__"]


def test_no_stage_runs_another_stage():
    """Stage modules and their helpers reach other stages only through segmix.stages.pipeline."""
    offences = [f"{path.relative_to(ROOT)}:{line} uses {name}"
                for path in sorted((ROOT / "segmix" / "stages").glob("*.py"))
                if path not in STAGE_RUNNERS
                for line, name in dynamic_stage_calls(path.read_text())]
    assert not offences, "\n".join(offences)


def test_one_list_of_stages():
    """Only the registry lists the stages: a collection naming most of them elsewhere (the API's
    functions, say) is a second list that a new stage would miss."""
    names = {stage.name for stage in STAGES} | {stage.name.replace("-", "_") for stage in STAGES}
    offences = []
    for path in sorted((ROOT / "segmix").rglob("*.py")):
        if path == ROOT / "segmix" / "stages" / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                listed = {item.value for item in node.elts if isinstance(item, ast.Constant)}
                listed |= {item.id for item in node.elts if isinstance(item, ast.Name)}
                if len(listed & names) > len(STAGES) // 2:
                    offences.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offences, "stages listed outside segmix/stages/__init__.py: " + ", ".join(offences)


def test_files_between_stages_are_named_only_in_artifacts():
    """The names of the files one stage writes and another reads (the ``*_FILE`` / ``*_CSV`` /
    ``*_FOLDER`` constants of segmix.artifacts) appear as text nowhere else in segmix."""
    from segmix import artifacts

    file_names = {value for name, value in vars(artifacts).items()
                  if name.endswith(("_FILE", "_CSV")) and isinstance(value, str)}
    offences = []
    for path in sorted((ROOT / "segmix").rglob("*.py")):
        if path == ROOT / "segmix" / "artifacts.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in file_names:
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not offences, "\n".join(offences)


def test_services_never_import_stages_or_the_cli():
    """Every module of segmix but the stages, the CLI and the API (which are built on stages)."""
    above = {ROOT / "segmix" / "cli.py", ROOT / "segmix" / "api.py"}
    services = [path for path in sorted((ROOT / "segmix").rglob("*.py"))
                if "stages" not in path.relative_to(ROOT).parts and path not in above]
    offences = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                for path in services for module, line in imported_modules(path)
                if module.startswith(("segmix.stages", "segmix.cli", "segmix.api"))]
    assert not offences, "\n".join(offences)


def test_the_house_keeps_its_rooms_small():
    """Families live in folders (segmix/ root: at most 12 modules) and no module grows past 400
    lines, where a reader starts to get lost."""
    root = sorted(path.name for path in (ROOT / "segmix").glob("*.py"))
    assert len(root) <= 12, f"segmix/ holds {len(root)} modules: {root}"
    long = [f"{path.relative_to(ROOT)} ({n} lines)"
            for folder in ("segmix", "cam", "pseudo_masks")
            for path in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > 400]
    assert not long, "modules over 400 lines: " + ", ".join(long)


def test_any_stage_can_be_the_first_one_loaded():
    """The CLI loads whichever stage it is asked for first: no stage may need another to be loaded
    before it (an import cycle through the orchestration shows only in that order)."""
    code = ("import importlib, sys\n"
            "from segmix.stages import STAGES\n"
            "for name in [stage.module_name for stage in STAGES]:\n"
            "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'segmix']:\n"
            "        del sys.modules[loaded]\n"
            "    importlib.import_module(name)\n"
            "print('loaded', len(STAGES))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"loaded {len(STAGES)}"


def test_help_imports_no_torch_and_shows_each_stage_its_own_example():
    code = ("import sys, segmix.cli as cli; cli.build_parser();"
            " print(sorted(m for m in ('torch', 'timm', 'cv2') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
    helps = {name: subprocess.run([sys.executable, "-m", "segmix.cli", name, "--help"],
                                  capture_output=True, text=True, check=True).stdout
             for name in ("train-cls", "predict", "shuffle-demo")}
    assert "train.epochs=20" in helps["train-cls"]
    assert "shuffle.patch_size" not in helps["train-cls"]
    assert "predict.overlap=0.5" in helps["predict"]
    assert "shuffle.patch_size=16" in helps["shuffle-demo"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_csv_dataset(tmp_path_factory.mktemp("tiles"), per_class=4, size=32)


def tiny(csv_path, *extra):
    settings = ["data.classes=[A, B, C]", f"data.train.path={csv_path}",
                f"data.val.path={csv_path}", "data.image_size=32", "model.name=test_efficientnet",
                "model.weights=null", "train.epochs=1", "train.batch_size=4", "train.num_workers=0",
                "augment.curriculum.patch_sizes=[16, 8]", *extra]
    return [a for s in settings for a in ("--set", s)]


def test_a_value_of_the_wrong_kind_names_its_key(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train-cls", "--output-dir", str(out), *tiny(dataset, "train.lr=abc")]) == 2
    assert "config key 'train.lr' must be a number, got 'abc'" in capsys.readouterr().err
    assert main(["train-cls", "--output-dir", str(out), *tiny(dataset, "train.amp=maybe")]) == 2
    assert "'train.amp' must be true or false" in capsys.readouterr().err
    assert not out.exists()  # nothing was written


@pytest.mark.parametrize("setting, message", [
    ("predict.overlap=2", "predict.overlap must be in [0, 1), got 2"),
    ("seg_train.lr=-1", "seg_train.lr must be a positive number, got -1"),
    ("seg_augment.curriculum.patch_sizes=[24]", "patch size 24 does not divide the image size"),
    ("cam.target_layers=[blocks.99]", "has no layer(s) ['blocks.99']"),
    ("masks.background=white", "unknown background 'white'"),
    ("sweep.metric=accuracy", "sweep.metric must be one of mIoU"),
    ("masks.foreground_weight=0.5", "but localiser.method is none"),
    ("localiser.method=clusters", "localiser.method must be one of none, prototypes"),
    ("localiser.feature_layers=[blocks.99]",
     "localiser.feature_layers: test_efficientnet has no layer(s) ['blocks.99']"),
])
def test_run_validates_every_stage_before_the_first_starts(dataset, tmp_path, capsys, setting,
                                                           message):
    out = tmp_path / "run"
    extra = (["sweep.enabled=true"] if setting.startswith("sweep") else
             ["localiser.method=none"] if setting.startswith("masks.foreground") else [])
    assert main(["run", "--output-dir", str(out), *tiny(dataset, setting, *extra)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # refused in its first second: no stage started


def test_a_run_that_failed_on_bad_input_takes_the_corrected_config(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    # a class the CSV does not use: the readers refuse the data once the stage starts
    assert main(["train-cls", "--output-dir", str(out),
                 *tiny(dataset, "data.classes=[A, B, X]")]) == 1
    assert "unknown class" in capsys.readouterr().err.lower()
    assert (out / "config.yaml").is_file() and not (out / "checkpoints").exists()
    assert main(["train-cls", "--output-dir", str(out), *tiny(dataset)]) == 0
    assert "data.classes" not in capsys.readouterr().err


def test_ctrl_c_ends_with_one_line_that_says_how_to_continue(dataset, tmp_path, monkeypatch,
                                                             capsys):
    out = tmp_path / "run"
    args = ["train-cls", "--output-dir", str(out), "--overwrite", *tiny(dataset, "train.epochs=2")]
    run_killed_after_first_epoch(monkeypatch, lambda: main(args))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("segmix train-cls: interrupted; finished epochs are kept. To continue:")
    assert last.endswith("--resume") and "--overwrite" not in last
    assert main(args[:3] + args[4:] + ["--resume"]) == 0


def test_an_image_above_the_pixel_limit_is_refused_by_name(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(path)
    with pytest.raises(ImageReadError, match=r"big.png: 40 x 30 px .* above the limit"):
        read_rgb(path, max_pixels=1000)
    # Pillow's own bomb limit does not apply: the limit is the caller's
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert read_rgb(path, max_pixels=2000).shape == (30, 40, 3)
    assert Image.MAX_IMAGE_PIXELS == 100  # and Pillow's setting is left as it was


def test_mixers_return_the_params_they_drew():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 16, 16)
    targets = torch.eye(3)[[0, 1, 2, 0]]
    masks = torch.randint(0, 4, (4, 16, 16))
    mixer = build_mixer({"curriculum": {"patch_sizes": [8], "fix_ratios": [0.25]}}, 3, (16, 16), 2)
    mixer.start_epoch(0)
    mixed = mixer(images, targets, masks, generator=generator)
    assert isinstance(mixed.params, ShuffleParams) and mixed.params.grid == (2, 2)
    assert torch.equal(apply_params(images, mixed.params), mixed.images)  # replayable
    assert torch.equal(apply_params(masks, mixed.params), mixed.masks)
    cut = CutMix(alpha=1.0)(images, targets, masks, generator=generator)
    assert isinstance(cut.params, PairParams) and cut.params.box is not None
    top, bottom, left, right = cut.params.box
    pasted = images[cut.params.permutation][..., top:bottom, left:right]
    assert torch.equal(cut.images[..., top:bottom, left:right], pasted)


def test_crf_without_its_extra_is_refused_before_the_stage_runs(tmp_path, capsys):
    if importlib.util.find_spec("pydensecrf") is not None:
        pytest.skip("the optional 'crf' extra is installed here")
    out = tmp_path / "masks"
    assert main(["pseudo-masks", "--output-dir", str(out), "--set", "data.classes=[A]",
                 "--set", "masks.crf=true"]) == 2
    assert "optional extra 'crf'" in capsys.readouterr().err and not out.exists()
