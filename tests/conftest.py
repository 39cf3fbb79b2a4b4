"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared folder (``$ROBUSTKIT_SHARED``) holding real data, e.g. ``data/cifar10/``.

    Skips (with the reason shown by ``-ra``) when the variable is unset; fails when it is set but
    does not name a directory, so a typo cannot silently skip the tests that need real data.
    """
    env = os.environ.get("ROBUSTKIT_SHARED")
    if not env:
        pytest.skip("ROBUSTKIT_SHARED is not set (it should point at the shared folder holding data/cifar10/)")
    path = Path(env).expanduser()
    if not path.is_dir():
        pytest.fail(f"ROBUSTKIT_SHARED={env!r} is not a directory")
    return path


@pytest.fixture
def one_thread():
    """Run the test with one intra-op thread (restored afterwards): on a shared 2-core machine threads only
    add contention for tiny networks (torchsde's double backward slows ~10× with them on a loaded 2-core
    machine). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def hermetic_data_env(tmp_path, monkeypatch):
    """No network and no data from the user's environment: offline, a fresh ROBUSTKIT_HOME, no ROBUSTKIT_DATA.
    Data tests use it for every test with ``pytestmark = pytest.mark.usefixtures("hermetic_data_env")``."""
    monkeypatch.setenv("ROBUSTKIT_OFFLINE", "1")
    monkeypatch.setenv("ROBUSTKIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ROBUSTKIT_DATA", raising=False)
