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
