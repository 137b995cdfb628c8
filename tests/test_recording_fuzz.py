"""Damaged and hostile recordings (`tests/recording_fuzz.py`), one case of each kind: ``fusion
info`` answers within 5 s of CPU and 512 MB, ``info --verify``, ``recover`` and a full read end
with at most one line naming the damage, never a traceback. `make fuzz` runs hundreds of cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import recording_fuzz as fuzz


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return fuzz.base_recording(tmp_path_factory.mktemp("base") / "base.mcap")


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(fuzz.KINDS))
def test_hostile_recordings_fail_fast_with_one_clear_line(
    kind: str, base: bytes, tmp_path: Path
) -> None:
    path = fuzz.make_case(kind, 7, base, tmp_path)
    result = fuzz.check(path)
    assert fuzz.problems(result) == [], result
    print(
        f"{kind}: fusion info {result['info']['cpu_s']:.2f} s CPU, exit {result['info']['exit']},"
        f" peak {result['max_rss_mb']:.0f} MB, {result['read']['messages']} messages read"
    )
