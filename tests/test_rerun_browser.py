"""What a person sees: an exported shipped drive in Rerun's web viewer, rendered by headless
Chromium, kept as ``out/rerun/city.png`` (see `tests/rerun_screenshot.py`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.rerun_screenshot import CHROMIUM, screenshot_recording

REPO = Path(__file__).resolve().parents[1]
ARTEFACT = REPO / "out" / "rerun" / "city.png"


@pytest.mark.slow
@pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"{CHROMIUM} is absent: `apt-get install -y chromium` for the browser check",
)
def test_web_viewer_renders_an_exported_drive() -> None:
    why = screenshot_recording(REPO / "recordings" / "city.mcap", ARTEFACT)
    assert ARTEFACT.stat().st_size > 50_000, why
    print(f"kept {ARTEFACT}: {why}")
