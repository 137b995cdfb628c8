"""Fusion node: camera (latest-only) + radar (queued) -> sync -> model -> `Detections`.

The logic lives in `fusion.perception.pipeline.FusionPipeline`; this file wires it to sockets.
Outputs carry the input's latency trace extended by each stage, the mode (``fused``,
``camera_only``, ``radar_only``), the VAE health score and whether the latency budget was missed.
A player's ``replay_control`` messages tell it the pace of a replay (`ReplayControl`).

    python -m nodes.fusion_node                       # defaults: committed sim weights, auto device
    python -m nodes.fusion_node --budget-ms 60 --device cpu --threads 2
    python -m nodes.fusion_node --backend onnxruntime # or auto (measured), torch, openvino, ...
    python -m nodes.fusion_node --mode radar_only     # hold the model to one sensor (ablation)
    python -m nodes.fusion_node --lockstep            # for `fusion play --lockstep`: the camera
        # queued, inputs taken in the player's order (`fusion.runtime.lockstep.StepGate`) and
        # decided at its steps by the data alone; every frame answered, nothing dropped for age

``--inject-delay-ms N`` is fault injection for tests: the node sleeps N ms before each model
pass, as a slower machine would (lock-step outputs must not change).
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting stall the model for a second at a time when the other
# nodes hold the cores (measured: 1.3 s instead of 23 ms per pass on 2 busy cores). Must be set
# before torch loads its OpenMP runtime; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import logging
import sys
import time

from fusion.core.latency import format_latency
from fusion.perception.pipeline import FusionPipeline, PipelineConfig
from fusion.runtime import node
from fusion.runtime.lockstep import CONTROL_TOPIC, StepGate
from fusion.runtime.transport import Publisher, Subscriber
from fusion.wire import services

log = logging.getLogger("fusion_node")
#: Inputs in the order they are fed to the pipeline within one poll: context first, camera last,
#: so a scan that arrived with a frame can still be matched to it; a replay's control last.
INPUT_TOPICS = ("calibration", "ego_motion", "radar", "camera", CONTROL_TOPIC)
#: Order the input sockets are opened in, after the model is warm: a player waiting for a
#: subscriber on every topic starts once the last one (ego motion, which only this node reads)
#: is subscribed, by when the others are too (the control topic first: a lock-step player must
#: not send a step before it is heard).
SUBSCRIBE_ORDER = (CONTROL_TOPIC, "camera", "radar", "calibration", "ego_motion")
POLL_MS = 2
MODE_COUNTERS = ("fused", "camera_only", "radar_only")
OUTPUT_SUBSCRIBERS_TIMEOUT_S = 120.0
WAIT_PROGRESS_S = 5.0


def radar_problem(scan) -> str | None:
    return "empty radar scan" if len(scan.points) == 0 else None


def build_detector(args: argparse.Namespace):
    from fusion.model.detector import DEFAULT_WEIGHTS, Detector

    detector = Detector.load(
        args.weights or DEFAULT_WEIGHTS,
        device=args.device,
        threads=args.threads,
        backend=args.backend,
    )
    detector.warm_up()
    log.info("model on %s, warmed up: %s", detector.device, detector.describe())
    return detector


class SlowedDetector:
    """Fault injection (``--inject-delay-ms``): `detector`, sleeping before each model pass."""

    def __init__(self, detector, delay_ms: float) -> None:
        self.detector = detector
        self.cfg = detector.cfg
        self.delay_s = delay_ms / 1000

    def preprocess(self, image_bgr, radar_points, camera):
        return self.detector.preprocess(image_bgr, radar_points, camera)

    def infer(self, prepared, mode: str = "fused"):
        time.sleep(self.delay_s)
        return self.detector.infer(prepared, mode)

    def decode(self, prepared, raw):
        return self.detector.decode(prepared, raw)


def wait_for_output_subscribers(pub: Publisher, count: int) -> None:
    """Hold the inputs until `count` subscribers are connected to the output (a subscriber that
    connects while the first outputs go out loses them; a lock-step player starts once the inputs
    are subscribed), logging progress; go on without them after `OUTPUT_SUBSCRIBERS_TIMEOUT_S`."""
    start = time.monotonic()
    while not pub.wait_for_subscribers(count, timeout_s=WAIT_PROGRESS_S):
        waited_s = time.monotonic() - start
        if waited_s >= OUTPUT_SUBSCRIBERS_TIMEOUT_S:
            log.warning(
                "%d of %d subscribers on detections after %.0f s; going on",
                pub.subscriber_count(),
                count,
                waited_s,
            )
            return
        log.info(
            "waiting for %d subscribers on detections (%d so far)", count, pub.subscriber_count()
        )


def summary(pipeline: FusionPipeline, inputs: node.Inputs) -> str:
    c = pipeline.counters
    modes = " ".join(f"{m} {c[m]}" for m in MODE_COUNTERS if c[m])
    if c["health_flagged"]:
        modes += f"; health flagged {c['health_flagged']}"
    drops = {
        k: v
        for k, v in c.items()
        if k not in (*MODE_COUNTERS, "camera_in", "radar_in", "health_flagged")
    }
    skipped = inputs.counters()["camera"]["skipped"]
    return (
        f"latency {format_latency(pipeline.latency_ms)}; {modes or 'no output yet'}; "
        f"camera skipped {skipped}; {drops or 'no drops'}"
    )


def with_input_problems(line: str, inputs: node.Inputs) -> str:
    problems = inputs.problems()
    return f"{line}; inputs: {problems}" if problems else line


def main(
    argv: list[str] | None = None, inputs: node.Inputs | None = None, pub=None, detector=None
) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_budget_ms = 1000.0 / services.service("camera").rate_hz
    parser.add_argument(
        "--budget-ms", type=float, default=default_budget_ms, help="capture -> detections budget"
    )
    parser.add_argument("--weights", help="checkpoint (default: the committed simulator weights)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument(
        "--backend",
        default="auto",
        help="auto (the fastest that agrees with fp32, measured at start) | torch | torch-bf16 "
        "| onnxruntime | openvino | cuda-fp16",
    )
    parser.add_argument(
        "--mode",
        default="auto",
        choices=("auto", "camera_only", "radar_only"),
        help="auto follows the sensors; camera_only / radar_only hold the model to one sensor",
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for the model")
    parser.add_argument("--slop-ms", type=float, default=80.0, help="radar/camera pairing slop")
    parser.add_argument(
        "--sync-deadline-ms", type=float, default=10.0, help="longest wait for radar"
    )
    parser.add_argument("--no-motion-compensation", action="store_true")
    parser.add_argument(
        "--lockstep",
        action="store_true",
        help="for a lock-step replay: inputs in the player's order, decided by the data alone",
    )
    parser.add_argument(
        "--wait-for-subscribers",
        type=int,
        default=0,
        metavar="N",
        help="before taking any input, wait until N subscribers (a recorder, a viewer, a "
        "lock-step player) are connected to the detections, so none misses the first outputs",
    )
    parser.add_argument(
        "--inject-delay-ms",
        type=float,
        default=0.0,
        help="fault injection: sleep this long before each model pass (a slower machine)",
    )
    node.add_common_arguments(parser)
    args = parser.parse_args(argv)
    node.setup_logging(args.log_level)
    overrides = node.endpoint_overrides(args)
    config = PipelineConfig(
        budget_ms=args.budget_ms,
        drop_stale=not args.lockstep,
        answer_every_frame=args.lockstep,
        slop_ms=args.slop_ms,
        sync_deadline_ms=args.sync_deadline_ms,
        motion_compensation=not args.no_motion_compensation,
        lockstep=args.lockstep,
        mode=args.mode,
    )
    detector = detector or build_detector(args)
    if args.inject_delay_ms > 0:
        detector = SlowedDetector(detector, args.inject_delay_ms)
    # Bind the output before subscribing: a lock-step player starts once it sees our inputs
    # subscribed and needs somewhere to hear the answers.
    pub = pub or Publisher("detections", services.endpoint("detections", overrides))
    if args.wait_for_subscribers:
        wait_for_output_subscribers(pub, args.wait_for_subscribers)
    if inputs is None:
        subs = {
            t: Subscriber(
                t,
                services.endpoint(t, overrides),
                latest_only=False if args.lockstep else None,  # lock-step: every frame
            )
            for t in SUBSCRIBE_ORDER
        }
        inputs = node.Inputs(subs, validators={"radar": radar_problem}, quiet=(CONTROL_TOPIC,))
    pipeline = FusionPipeline(detector, config)
    gate = StepGate() if args.lockstep else None
    shutdown = node.ShutdownFlag()
    stats = node.StatsLine(
        "fusion",
        args.stats_period_s,
        lambda: with_input_problems(summary(pipeline, inputs), inputs),
    )

    def hold(got: dict) -> None:
        """Lock-step: into the gate, images decoding ahead while the model runs."""
        for topic in INPUT_TOPICS:
            for msg in got.get(topic, ()):
                if topic == "camera":
                    pipeline.prefetch(msg)
                gate.add(topic, msg)

    try:
        while not shutdown:
            got = inputs.poll(POLL_MS)
            if gate is None:
                arrived = [(topic, msg) for topic in INPUT_TOPICS for msg in got.get(topic, ())]
            else:
                hold(got)
                arrived = gate.release()
            for topic, msg in arrived:
                if topic == CONTROL_TOPIC and gate is not None:
                    hold(inputs.poll(0))  # what came meanwhile decodes during this step
                for out in pipeline.feed(topic, msg):
                    pub.send(out)
            for out in pipeline.step():
                pub.send(out)
            stats.tick()
    finally:
        if gate is not None and gate.counters:
            log.info("[fusion] lock-step gate: %s", dict(gate.counters))
        log.info("[fusion] final: %s", summary(pipeline, inputs))
        inputs.close()
        pub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
