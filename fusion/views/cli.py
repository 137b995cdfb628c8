"""``fusion export foxglove|rerun`` and ``fusion view --foxglove|--rerun``.

    fusion export foxglove drive.mcap -o drive.foxglove.mcap
    fusion export rerun drive.mcap -o drive.rrd
    fusion view --foxglove [--port 8765]      # Foxglove: open ws://127.0.0.1:8765
    fusion view --rerun [--port 9876]         # Rerun: the web viewer's address is logged

Each viewer lives in its own module (`fusion.views.foxglove`, `fusion.views.rerun`), imported
only when asked for, with ``add_export_arguments`` / ``export(args)`` and ``add_view_arguments``
/ ``view(args)``.
"""

from __future__ import annotations

import argparse
import importlib

from fusion.runtime import node

#: viewer -> its module
VIEWERS = {"foxglove": "fusion.views.foxglove", "rerun": "fusion.views.rerun"}
#: Detections drawn from this score up by default, as the video viewer (`nodes.viewer`) does:
#: the model's outputs go down to its decoder's threshold, too many boxes to read.
DISPLAY_MIN_SCORE = 0.3


def _add_min_score(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-score",
        type=float,
        default=DISPLAY_MIN_SCORE,
        help=f"draw detections from this score up (default {DISPLAY_MIN_SCORE}; 0: all)",
    )


def _viewer(name: str):
    return importlib.import_module(VIEWERS[name])


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="viewer", required=True, metavar="{foxglove,rerun}")
    for name in VIEWERS:
        p = sub.add_parser(name, help=f"write a recording as a {name.title()} file")
        p.add_argument("file", help="recording (.mcap)")
        p.add_argument("-o", "--output", required=True, help="file to write")
        _add_min_score(p)
        _viewer(name).add_export_arguments(p)


def run_export(args: argparse.Namespace) -> int:
    return _viewer(args.viewer).export(args)


def add_view_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    for name in VIEWERS:
        which.add_argument(
            f"--{name}",
            dest="viewer",
            action="store_const",
            const=name,
            help=f"serve the running graph to {name.title()}",
        )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (loopback by default)"
    )
    parser.add_argument("--port", type=int, default=None, help="port (the viewer's default)")
    parser.add_argument(
        "--duration-s", type=float, default=0.0, help="stop after this many seconds (0: never)"
    )
    _add_min_score(parser)
    node.add_common_arguments(parser)
    for name in VIEWERS:
        _viewer(name).add_view_arguments(parser)


def run_view(args: argparse.Namespace) -> int:
    return _viewer(args.viewer).view(args)
