"""The drives shipped in `recordings/`, and the one command that makes them again.

    python -m fusion.sim.shipped            # rewrites recordings/*.mcap
    python -m fusion.sim.shipped --check    # regenerates into a temp folder and compares bytes

Each is `fusion sim` with the arguments below; `tests/test_shipped_recordings.py` checks that
regenerating gives the committed bytes. Sizes are kept to a few MB each (960x540 JPEG).
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from fusion.sim import cli

RECORDINGS = Path(__file__).resolve().parents[2] / "recordings"

#: file name -> `fusion sim` arguments
SHIPPED: dict[str, list[str]] = {
    "city.mcap": [
        "--scenario",
        "city",
        "--seed",
        "1",
        "--duration",
        "10",
        "--width",
        "960",
        "--height",
        "540",
        "--jpeg-quality",
        "75",
    ],
    "highway.mcap": [
        "--scenario",
        "highway",
        "--seed",
        "2",
        "--duration",
        "10",
        "--width",
        "960",
        "--height",
        "540",
        "--jpeg-quality",
        "75",
    ],
    "night.mcap": [
        "--scenario",
        "night",
        "--seed",
        "3",
        "--duration",
        "8",
        "--width",
        "960",
        "--height",
        "540",
        "--jpeg-quality",
        "70",
    ],
}


def make(name: str, folder: Path) -> Path:
    out = folder / name
    parser = argparse.ArgumentParser(prog="fusion sim")
    cli.add_arguments(parser)
    if cli.run(parser.parse_args([*SHIPPED[name], "-o", str(out)])) != 0:
        raise SystemExit(f"fusion sim failed for {name}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files")
    args = parser.parse_args(argv)
    if not args.check:
        for name in SHIPPED:
            make(name, RECORDINGS)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        bad = [
            n for n in SHIPPED if not filecmp.cmp(make(n, Path(tmp)), RECORDINGS / n, shallow=False)
        ]
    print("all shipped recordings regenerate byte for byte" if not bad else f"differ: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
