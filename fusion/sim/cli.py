"""``fusion sim``: simulate a drive into an MCAP recording.

Example: ``fusion sim --scenario city --seed 1 --duration 10 -o recordings/city.mcap``. Messages
are written with log time = capture time (the ``sim`` clock, from 0). The file's metadata names
the scenario and seed instead of the wall-clock creation time and host, so the same arguments
give a byte-identical file.
"""

from __future__ import annotations

import argparse
import logging

from fusion.sim.drive import simulate
from fusion.sim.scenarios import SCENARIOS

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario", default="city", choices=sorted(SCENARIOS), help="drive kind (default city)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--width", type=int, default=1280, help="image width, px")
    parser.add_argument("--height", type=int, default=720, help="image height, px")
    parser.add_argument("--camera-rate", type=float, default=20.0, help="Hz (default 20)")
    parser.add_argument("--radar-rate", type=float, default=13.0, help="Hz (default 13)")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="1-100 (default 90)")
    parser.add_argument("--raw", action="store_true", help="store raw BGR frames, not JPEG")
    parser.add_argument("-o", "--output", required=True, help="recording to write (.mcap)")


def run(args: argparse.Namespace) -> int:
    from fusion.logs.writer import RecordingWriter

    metadata = {
        "source": "fusion sim",
        "scenario": args.scenario,
        "seed": str(args.seed),
        "log_time_clock": "sim",
        "created_utc_ns": "0",
        "host": "",
    }
    messages = simulate(
        scenario=args.scenario,
        seed=args.seed,
        duration_s=args.duration,
        camera_rate_hz=args.camera_rate,
        radar_rate_hz=args.radar_rate,
        width_px=args.width,
        height_px=args.height,
        jpeg_quality=None if args.raw else args.jpeg_quality,
    )
    with RecordingWriter(args.output, metadata=metadata) as writer:
        for topic, msg in messages:
            writer.write(topic, msg, log_time_ns=msg.capture_ns)
        counts = dict(writer.counts)
    log.info("wrote %s: %s", args.output, ", ".join(f"{t} {n}" for t, n in sorted(counts.items())))
    return 0
