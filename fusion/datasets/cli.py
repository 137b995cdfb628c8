"""The ``fusion import`` command: a real dataset into an MCAP recording.

``fusion import astyx DIR -o FILE`` reads every Astyx HiRes2019 frame (see
`fusion.datasets.astyx`) and writes, per frame and at its assigned time (frame ``i`` at
``i * 100 ms``), the ``camera`` (JPEG bytes as in the dataset), ``radar`` and ``ground_truth``
messages; the two ``calibration`` messages (``camera_front``, ``radar``) are written before the
first frame and then once per second of assigned time, so a reader that starts mid-recording
still finds them. MCAP log times are the assigned times (metadata ``log_time_clock=assigned``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fusion.datasets import astyx
from fusion.errors import ConfigError
from fusion.logs.writer import RecordingWriter

log = logging.getLogger(__name__)

DATASETS = ("astyx",)
#: Calibration is repeated at this assigned-time interval (the registry's 1 Hz).
CALIBRATION_PERIOD_NS = 1_000_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS, help="which dataset DIR holds")
    parser.add_argument(
        "dir",
        nargs="?",
        type=Path,
        help=f"dataset directory (default: ${astyx.ROOT_ENV} or ../shared/realdata/<dataset>)",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="MCAP file to write")
    parser.add_argument(
        "--frames",
        default=None,
        metavar="START:STOP",
        help="import only frame indices START <= i < STOP (either may be empty)",
    )


def run(args: argparse.Namespace) -> int:
    root = args.dir if args.dir is not None else astyx.default_root()
    indices = select_frames(astyx.frame_indices(root), args.frames)
    counts = import_astyx(root, args.output, indices)
    log.info("wrote %s: %s", args.output, ", ".join(f"{t} {n}" for t, n in counts.items()))
    return 0


def select_frames(indices: list[int], spec: str | None) -> list[int]:
    """The indices within ``START:STOP`` (Python slice bounds on the index values)."""
    if spec is None:
        return indices
    start_text, sep, stop_text = spec.partition(":")
    try:
        start = int(start_text) if start_text else None
        stop = int(stop_text) if stop_text else None
    except ValueError:
        start = stop = None
        sep = ""
    if not sep:
        raise ConfigError(f"--frames must look like START:STOP (e.g. 0:100), got {spec!r}")
    chosen = [i for i in indices if (start is None or i >= start) and (stop is None or i < stop)]
    if not chosen:
        raise ConfigError(f"--frames {spec} selects none of the frames {indices[0]}..{indices[-1]}")
    return chosen


def import_astyx(root: Path, output: Path, indices: list[int]) -> dict[str, int]:
    """Write Astyx frames `indices` from `root` into the recording `output`; returns the
    number of messages per topic."""
    metadata = {
        "log_time_clock": "assigned",
        "source": "Astyx HiRes2019",
        "source_license": "CC BY-NC-SA 4.0",
        "frame_period_ns": str(astyx.NOMINAL_PERIOD_NS),
    }
    next_calibration_ns = None
    with RecordingWriter(output, metadata=metadata) as writer:
        for index in indices:
            frame = astyx.read_frame(root, index)
            capture_ns = frame.camera.capture_ns
            if next_calibration_ns is None or capture_ns >= next_calibration_ns:
                for calibration in frame.calibrations:
                    writer.write("calibration", calibration, log_time_ns=capture_ns)
                next_calibration_ns = capture_ns + CALIBRATION_PERIOD_NS
            writer.write("camera", frame.camera, log_time_ns=capture_ns)
            writer.write("radar", frame.radar, log_time_ns=capture_ns)
            writer.write("ground_truth", frame.ground_truth, log_time_ns=capture_ns)
        return dict(writer.counts)
