"""Player node: publishes a recording's topics with their original timing, faster, or lock-step.

    python -m nodes.player drive.mcap [--rate 2 | --max-speed | --lockstep] [--loop]
        [--start S] [--end S] [--topics camera,radar]

Same as ``fusion play``; the logic is `fusion.logs.player.Player` (modes and re-stamping are
described there).
"""

from __future__ import annotations

import sys

from fusion.logs.cli import add_play_arguments, run_play
from fusion.runtime.node import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("nodes.player", __doc__.splitlines()[0], add_play_arguments, run_play, argv)


if __name__ == "__main__":
    sys.exit(main())
