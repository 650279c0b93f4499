"""Test harness: interpreter switch, seeding, poisoning and GPU markers.

TRITON_INTERPRET must be set before the first `@triton.jit` runs, so it is set here at
import time, before any test module imports the package.
"""

import os
import sys

import torch

# bench/ helpers are importable as `bench.*` from tests.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

GPU_SKIP_REASON = "needs a CUDA GPU (torch.cuda.is_available() is False on this machine)"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason=GPU_SKIP_REASON)
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def poison():
    """Every uninitialised allocation (torch.empty in Python, at::empty in C++) is NaN-filled.

    Kernels allocate their outputs uninitialised, so an element a kernel never writes stays
    NaN (ints: their max) and fails the parity check loudly instead of holding whatever the
    memory had before. torch does this in deterministic mode with fill_uninitialized_memory.
    """
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.utils.deterministic.fill_uninitialized_memory = fill
    torch.use_deterministic_algorithms(was_on, warn_only=was_warn)
