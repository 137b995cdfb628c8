"""Radar producer node: publishes `RadarScan`s (and `EgoMotion` when the source has it).

Sources: ``sim:SCENARIO[:SEED]`` (the simulator's radar and ego motion), ``recording:FILE``
(the radar and ego-motion topics of a recording), ``udp:HOST:PORT`` (a sensor bridge sending
the datagrams described in `fusion.sensors.radar.UdpRadarDriver`: the sensor's own scan counter,
so lost datagrams are counted, and its capture time when it has one). Replayed and simulated scans
are released at their own timing and restamped onto this host's monotonic clock. The radar frame
is the reference frame, so a single radar needs no calibration message.

To connect a real radar, subclass `fusion.sensors.radar.RadarDriver` and pass it as `driver`.

    python -m nodes.radar --source sim:city:1
    python -m nodes.radar --source udp:127.0.0.1:50000
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator

from fusion.errors import ConfigError
from fusion.runtime import node
from fusion.runtime.transport import Publisher
from fusion.sensors import producer, sources
from fusion.sensors.pacing import Pacer, paced
from fusion.sensors.radar import RadarDriver, UdpRadarDriver
from fusion.wire.messages import Message
from fusion.wire.services import endpoint

log = logging.getLogger("radar")
TOPICS = {"radar", "ego_motion"}


def replayed(args: argparse.Namespace, pacer: Pacer) -> Iterator[tuple[str, Message]]:
    kind, parts = sources.parse_source(args.source)
    if kind not in ("sim", "recording"):
        raise ConfigError(f"the radar node cannot replay a {kind} source")
    options = {}
    if kind == "sim":  # a restart joins the drive's present
        options = {"duration_s": args.duration_s, "start_s": pacer.start_offset_ns() / 1e9}
    return paced(sources.replayed_messages(kind, parts, TOPICS, **options), pacer)


def drive(
    driver: RadarDriver, pub: Publisher, shutdown: node.ShutdownFlag, stats_period_s: float
) -> int:
    sent = 0
    stats = node.StatsLine(
        "radar",
        stats_period_s,
        lambda: f"{sent} scans sent, {driver.rejected} rejected, {driver.lost} lost",
    )
    while not shutdown:
        scan = driver.read_scan(timeout_s=0.2)
        if scan is not None:
            pub.send(scan)
            sent += 1
        stats.tick()
    return sent


def main(argv: list[str] | None = None, driver: RadarDriver | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    producer.add_arguments(
        parser, "sim:SCENARIO[:SEED] | recording:FILE | udp:HOST:PORT", required=False
    )
    args = parser.parse_args(argv)
    node.setup_logging(args.log_level)
    overrides = node.endpoint_overrides(args)
    if driver is None and args.source.startswith("udp:"):
        _, parts = sources.parse_source(args.source)
        if len(parts) != 2:
            raise ConfigError(f"udp source is udp:HOST:PORT, got {args.source!r}")
        driver = UdpRadarDriver(parts[0], int(parts[1]))
    pubs = {t: Publisher(t, endpoint(t, overrides)) for t in sorted(TOPICS)}
    shutdown = node.ShutdownFlag()
    if args.wait_for_subscribers:
        pubs["radar"].wait_for_subscribers(args.wait_for_subscribers, timeout_s=30)
    sent = 0

    def send(topic: str, msg: Message) -> None:
        nonlocal sent
        pubs[topic].send(msg)
        sent += topic == "radar"

    try:
        if driver is not None:
            sent = drive(driver, pubs["radar"], shutdown, args.stats_period_s)
        else:
            producer.run(args, lambda pacer: replayed(args, pacer), send, shutdown)
    finally:
        for pub in pubs.values():
            pub.close()
        if driver is not None:
            driver.close()
    lost = f", {driver.lost} lost, {driver.rejected} rejected" if driver is not None else ""
    log.info("radar: %d scans sent%s", sent, lost)
    return 0


if __name__ == "__main__":
    sys.exit(main())
