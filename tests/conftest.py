import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# Hypothesis: no per-example deadline on this noisy 2-core machine; a fixed database-free profile
# in CI so runs are reproducible.
sys.path.insert(0, str(Path(__file__).parent))  # tests/synthetic.py

settings.register_profile(
    "default", deadline=None, max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "ci", parent=settings.get_profile("default"), derandomize=True, database=None,
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is available")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def benchmark_script(monkeypatch):
    """A loader of a script in benchmarks/ by name, its sibling scripts importable as when run."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """Colour-coded tiles (tests/synthetic.py), 16 a class, one red (A) train tile labelled B."""
    from synthetic import write_csv_dataset

    csv_path = write_csv_dataset(tmp_path_factory.mktemp("planted"), per_class=16, size=32)
    lines = csv_path.read_text().splitlines()
    wrong = next(i for i, line in enumerate(lines) if line.startswith("images/A_0.png"))
    lines[wrong] = lines[wrong].replace(",A,train", ",B,train")
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path
