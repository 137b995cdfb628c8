"""What the camera and radar producer nodes share: their arguments and their replay loop.

A producer node opens a source (`fusion.sensors.sources`), paces replayed and simulated
messages (`fusion.sensors.pacing`) and publishes them; `run` is that loop, with ``--loop``
starting a file source again at its end, until the source ends or the node is asked to stop.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

from fusion.runtime import heartbeat, node
from fusion.sensors.pacing import Pacer, epoch_from_env
from fusion.wire.messages import Message


def add_arguments(parser: argparse.ArgumentParser, sources_help: str, *, required: bool) -> None:
    """``--source`` and the replay flags every producer takes, then the common node flags."""
    parser.add_argument("--source", required=required, default="", help=sources_help)
    parser.add_argument(
        "--rate",
        type=float,
        default=1.0,
        help="replay speed of file, recording and simulated sources; 0 = as fast as possible",
    )
    parser.add_argument(
        "--duration-s", type=float, default=60.0, help="length of a simulated drive"
    )
    parser.add_argument(
        "--loop", action="store_true", help="start a replayed source again at its end"
    )
    parser.add_argument(
        "--wait-for-subscribers",
        type=int,
        default=0,
        metavar="N",
        help="hold the first message until N subscribers",
    )
    node.add_common_arguments(parser)


def run(
    args: argparse.Namespace,
    open_stream: Callable[[Pacer], Iterable[tuple[str, Message]]],
    send: Callable[[str, Message], None],
    shutdown: node.ShutdownFlag,
) -> None:
    """`send` what ``open_stream(pacer)`` yields until it ends (again and again with
    ``--loop``) or `shutdown` is set. Simulated sources are paced from the graph's epoch
    (``$FUSION_EPOCH_NS``), so separate producers of one drive stay aligned."""
    pacer = Pacer(args.rate, epoch_from_env() if args.source.startswith("sim:") else None)
    while not shutdown:
        for topic, msg in open_stream(pacer):
            if shutdown:
                break
            send(topic, msg)
            heartbeat.beat()
        if not args.loop:
            break
