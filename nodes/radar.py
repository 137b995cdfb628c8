"""Radar producer node: publishes `RadarScan`s (and `EgoMotion` when the source has it).

Sources: ``sim:SCENARIO[:SEED]`` (the simulator's radar and ego motion), ``recording:FILE``
(the radar and ego-motion topics of a recording), ``udp:HOST:PORT`` (a sensor bridge sending
the datagrams described in `fusion.sources.UdpRadarDriver`). Replayed and simulated scans are
released at their own timing and restamped onto this host's monotonic clock. The radar frame is
the reference frame, so a single radar needs no calibration message.

To connect a real radar, subclass `fusion.sources.RadarDriver` and pass it as `driver`.

    python -m nodes.radar --source sim:city:1
    python -m nodes.radar --source udp:127.0.0.1:50000
"""

from __future__ import annotations

import argparse
import logging
import sys

from fusion import sources
from fusion.errors import ConfigError
from fusion.runtime import node
from fusion.runtime.transport import Publisher
from fusion.wire.messages import restamp
from fusion.wire.services import endpoint

log = logging.getLogger("radar")
TOPICS = {"radar", "ego_motion"}


def replay(
    args: argparse.Namespace,
    pubs: dict[str, Publisher],
    shutdown: node.ShutdownFlag,
    pacer: sources.Pacer,
) -> int:
    kind, parts = sources.parse_source(args.source)
    if kind == "sim":
        seed = int(parts[1]) if len(parts) > 1 else 0
        stream = sources.simulated_messages(parts[0], seed, TOPICS, duration_s=args.duration_s)
    elif kind == "recording":
        stream = sources.recorded_messages(parts[0], TOPICS)
    else:
        raise ConfigError(f"the radar node cannot replay a {kind} source")
    sent = 0
    for topic, msg in stream:
        if shutdown:
            break
        released_ns = pacer.wait(msg.capture_ns)
        if released_ns is None:
            continue
        pubs[topic].send(restamp(msg, released_ns))
        sent += topic == "radar"
    return sent


def drive(
    driver: sources.RadarDriver, pub: Publisher, shutdown: node.ShutdownFlag, stats_period_s: float
) -> int:
    sent = 0
    stats = node.StatsLine(
        "radar", stats_period_s, lambda: f"{sent} scans sent, {driver.rejected} rejected"
    )
    while not shutdown:
        scan = driver.read_scan(timeout_s=0.2)
        if scan is not None:
            pub.send(scan)
            sent += 1
        stats.tick()
    return sent


def main(argv: list[str] | None = None, driver: sources.RadarDriver | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", default="", help="sim:SCENARIO[:SEED] | recording:FILE | udp:HOST:PORT"
    )
    parser.add_argument(
        "--rate", type=float, default=1.0, help="replay speed; 0 = as fast as possible"
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
        help="hold the first scan until N subscribers",
    )
    node.add_common_arguments(parser)
    args = parser.parse_args(argv)
    node.setup_logging(args.log_level)
    overrides = node.endpoint_overrides(args)
    if driver is None and args.source.startswith("udp:"):
        _, parts = sources.parse_source(args.source)
        if len(parts) != 2:
            raise ConfigError(f"udp source is udp:HOST:PORT, got {args.source!r}")
        driver = sources.UdpRadarDriver(parts[0], int(parts[1]))
    pubs = {t: Publisher(t, endpoint(t, overrides)) for t in sorted(TOPICS)}
    shutdown = node.ShutdownFlag()
    if args.wait_for_subscribers:
        pubs["radar"].wait_for_subscribers(args.wait_for_subscribers, timeout_s=30)
    sent = 0
    try:
        if driver is not None:
            sent = drive(driver, pubs["radar"], shutdown, args.stats_period_s)
        else:
            epoch = sources.epoch_from_env() if args.source.startswith("sim:") else None
            pacer = sources.Pacer(args.rate, epoch)
            while not shutdown:
                sent += replay(args, pubs, shutdown, pacer)
                if not args.loop:
                    break
    finally:
        for pub in pubs.values():
            pub.close()
        if driver is not None:
            driver.close()
    log.info("radar: %d scans sent", sent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
