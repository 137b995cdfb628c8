"""Recorder node: writes the chosen topics (all recorded topics by default) to an MCAP file.

    python -m nodes.recorder -o drive.mcap [--topics camera,radar] [--chunk-size BYTES]

SIGINT or SIGTERM finishes a valid, indexed file; after a SIGKILL, ``fusion recover`` keeps
every finished chunk. Same as ``fusion record``; the logic is `fusion.logs.recorder.Recorder`.
"""

from __future__ import annotations

import argparse
import sys

from fusion.errors import FusionError
from fusion.logs.cli import add_record_arguments, run_record
from fusion.runtime import node


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nodes.recorder", description=__doc__.splitlines()[0])
    add_record_arguments(parser)
    args = parser.parse_args(argv)
    node.setup_logging(args.log_level)
    try:
        return run_record(args)
    except FusionError as exc:
        print(f"recorder: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
