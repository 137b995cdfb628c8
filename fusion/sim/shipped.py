"""The drives shipped in `recordings/`, and the one command that makes them again.

    python -m fusion.sim.shipped            # rewrites recordings/*.mcap
    python -m fusion.sim.shipped --check    # regenerates into a temp folder and compares bytes

Each is `fusion sim` with the arguments below; `tests/test_shipped_recordings.py` checks that
regenerating gives the committed bytes, on any x86-64 CPU (the simulator avoids numpy's
CPU-specific vectorised maths: `fusion.sim._exact`), and names the first message and field that
differ when it does not. Sizes are kept to a few MB each (960x540 JPEG).
"""

from __future__ import annotations

import argparse
import dataclasses
import filecmp
import itertools
import sys
import tempfile
from pathlib import Path

import numpy as np

from fusion.logs.reader import RecordingReader
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


def first_difference(got: Path, want: Path) -> str | None:
    """Where recording `got` first differs from `want`: the message (topic, seq, log time) and
    the field, with both values; None when the files are byte-identical."""
    if filecmp.cmp(got, want, shallow=False):
        return None
    with RecordingReader(got) as a, RecordingReader(want) as b:
        pairs = itertools.zip_longest(a.messages(), b.messages())
        for k, (x, y) in enumerate(pairs):
            if x is None or y is None:
                extra = x or y
                which = "regenerated" if x is not None else "committed"
                return f"message {k} ({extra.topic} seq {extra.sequence}) only in the {which} file"
            if (x.topic, x.log_time_ns) != (y.topic, y.log_time_ns):
                return (
                    f"message {k}: {x.topic} at {x.log_time_ns} ns, committed has {y.topic} "
                    f"at {y.log_time_ns} ns"
                )
            if [bytes(f) for f in x.frames] != [bytes(f) for f in y.frames]:
                return f"message {k} ({x.topic} seq {x.sequence}): {_field_difference(x, y)}"
    return "every message is identical; the files differ in their metadata or index"


def _field_difference(x, y) -> str:
    mx, my = x.decode(), y.decode()
    for f in dataclasses.fields(mx):
        u, v = getattr(mx, f.name), getattr(my, f.name)
        if not isinstance(u, np.ndarray):
            if u != v:
                return f"{f.name} is {u!r}, committed {v!r}"
            continue
        if u.shape != v.shape:
            return f"{f.name} has shape {u.shape}, committed {v.shape}"
        for name in u.dtype.names or (None,):
            a, b = (u, v) if name is None else (u[name], v[name])
            bits_a = np.ascontiguousarray(a).view(np.uint8).reshape(a.size, -1)
            bits_b = np.ascontiguousarray(b).view(np.uint8).reshape(b.size, -1)
            bad = np.flatnonzero((bits_a != bits_b).any(axis=1))  # NaNs compare by their bits
            if len(bad):
                i = np.unravel_index(bad[0], a.shape)
                label = f.name if name is None else f"{f.name}[{name!r}]"
                return f"{label} at {tuple(int(j) for j in i)} is {a[i]!r}, committed {b[i]!r}"
    return "the encoded bytes differ (header fields or dtype)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files")
    args = parser.parse_args(argv)
    if not args.check:
        for name in SHIPPED:
            make(name, RECORDINGS)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        bad = {n: first_difference(make(n, Path(tmp)), RECORDINGS / n) for n in SHIPPED}
    bad = {n: why for n, why in bad.items() if why is not None}
    for name, why in bad.items():
        print(f"recordings/{name} differs: {why}")
    if not bad:
        print("all shipped recordings regenerate byte for byte")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
