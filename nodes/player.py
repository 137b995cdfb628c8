"""Player node: publishes a recording's topics with their original timing, faster, or lock-step.

    python -m nodes.player drive.mcap [--rate 2 | --max-speed | --lockstep] [--loop]
        [--start S] [--end S] [--topics camera,radar]

Same as ``fusion play``; the logic is `fusion.logs.player.Player` (modes and re-stamping are
described there).
"""

from __future__ import annotations

import argparse
import sys

from fusion.errors import FusionError
from fusion.logs.cli import add_play_arguments, run_play
from fusion.runtime import node


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nodes.player", description=__doc__.splitlines()[0])
    add_play_arguments(parser)
    args = parser.parse_args(argv)
    node.setup_logging(args.log_level)
    try:
        return run_play(args)
    except FusionError as exc:
        print(f"player: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
