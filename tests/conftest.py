"""Shared fixtures: every test gets its own ipc socket folder, so parallel runs never collide;
``--busy-cores N`` runs the tests while N processes spin on the CPU (``make test-load``)."""

from __future__ import annotations

import os

# Passive OpenMP waiting: torch threads spinning at barriers stall everything else on 2 cores
# (see nodes/fusion_node.py). Set before torch is imported by any test.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASTYX_ROOT = REPO.parent / "shared" / "realdata" / "astyx_hires2019"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--busy-cores",
        type=int,
        default=0,
        metavar="N",
        help="run the tests while N busy-loop processes hold the CPU (a machine where other "
        "work uses the cores; `make test-load` uses 2)",
    )


@pytest.fixture(scope="session", autouse=True)
def busy_cores(request: pytest.FixtureRequest):
    """N processes spinning at normal priority for the whole session, like `stress -c N`."""
    count = request.config.getoption("--busy-cores")
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    yield len(burners)
    for proc in burners:
        proc.kill()
        proc.wait()


@pytest.fixture(autouse=True)
def ipc_dir(monkeypatch: pytest.MonkeyPatch):
    # ipc paths are limited to ~107 bytes, so keep the folder short rather than under tmp_path.
    path = tempfile.mkdtemp(prefix="fx-")
    monkeypatch.setenv("FUSION_IPC_DIR", path)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """Exported graphs and backend choices of this test session: shared by its node processes
    (the tiny test weights are exported and timed once), kept apart from the user's cache."""
    path = tmp_path_factory.mktemp("fusion-cache")
    old = os.environ.get("FUSION_CACHE_DIR")
    os.environ["FUSION_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("FUSION_CACHE_DIR", None)
    else:
        os.environ["FUSION_CACHE_DIR"] = old


@pytest.fixture
def astyx_root() -> Path:
    if not ASTYX_ROOT.is_dir():
        pytest.skip(
            f"real data not found at {ASTYX_ROOT} (needs ../shared/realdata beside the repo)"
        )
    return ASTYX_ROOT
