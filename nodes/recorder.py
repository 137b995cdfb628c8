"""Recorder node: writes the chosen topics (all recorded topics by default) to an MCAP file.

    python -m nodes.recorder -o drive.mcap [--topics camera,radar] [--chunk-size BYTES]

SIGINT or SIGTERM finishes a valid, indexed file; after a SIGKILL, ``fusion recover`` keeps
every finished chunk. Same as ``fusion record``; the logic is `fusion.logs.recorder.Recorder`.
"""

from __future__ import annotations

import sys

from fusion.logs.cli import add_record_arguments, run_record
from fusion.runtime.node import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command(
        "nodes.recorder", __doc__.splitlines()[0], add_record_arguments, run_record, argv
    )


if __name__ == "__main__":
    sys.exit(main())
