"""Fusion node: camera (latest-only) + radar (queued) -> sync -> model -> `Detections`.

The logic lives in `fusion.perception.pipeline.FusionPipeline`; this file wires it to sockets.
Outputs carry the input's latency trace extended by each stage, the mode (``fused``,
``camera_only``, ``radar_only``), the VAE health score and whether the latency budget was missed.

    python -m nodes.fusion_node                       # defaults: committed sim weights, auto device
    python -m nodes.fusion_node --budget-ms 60 --device cpu --threads 2
    python -m nodes.fusion_node --backend onnxruntime # or auto (measured), torch, openvino, ...
    python -m nodes.fusion_node --mode radar_only     # hold the model to one sensor (ablation)
    python -m nodes.fusion_node --lockstep            # for `fusion play --lockstep`: every frame
                                                      # answered, nothing dropped for age
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

from fusion.core.latency import format_latency
from fusion.perception.pipeline import FusionPipeline, PipelineConfig
from fusion.runtime import node
from fusion.runtime.transport import Publisher, Subscriber
from fusion.wire import services

log = logging.getLogger("fusion_node")
#: Inputs in the order they are fed to the pipeline within one poll: context first, camera last,
#: so a scan that arrived with a frame can still be matched to it.
INPUT_TOPICS = ("calibration", "ego_motion", "radar", "camera")
#: Order the input sockets are opened in, after the model is warm: a player waiting for a
#: subscriber on every topic starts once the last one (ego motion, which only this node reads)
#: is subscribed, by when the others are too.
SUBSCRIBE_ORDER = ("camera", "radar", "calibration", "ego_motion")
POLL_MS = 2
MODE_COUNTERS = ("fused", "camera_only", "radar_only")


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
        "--lockstep", action="store_true", help="answer every frame, never drop for age"
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
        sync_deadline_ms=3.0 if args.lockstep else args.sync_deadline_ms,
        motion_compensation=not args.no_motion_compensation,
        mode=args.mode,
    )
    detector = detector or build_detector(args)
    # Bind the output before subscribing: a lock-step player starts once it sees our inputs
    # subscribed and needs somewhere to hear the answers.
    pub = pub or Publisher("detections", services.endpoint("detections", overrides))
    if inputs is None:
        subs = {t: Subscriber(t, services.endpoint(t, overrides)) for t in SUBSCRIBE_ORDER}
        inputs = node.Inputs(subs, validators={"radar": radar_problem})
    pipeline = FusionPipeline(detector, config)
    shutdown = node.ShutdownFlag()
    stats = node.StatsLine(
        "fusion",
        args.stats_period_s,
        lambda: with_input_problems(summary(pipeline, inputs), inputs),
    )
    try:
        while not shutdown:
            got = inputs.poll(POLL_MS)
            for topic in INPUT_TOPICS:
                for msg in got.get(topic, ()):
                    pipeline.add(topic, msg)
            for out in pipeline.step():
                pub.send(out)
            stats.tick()
    finally:
        log.info("[fusion] final: %s", summary(pipeline, inputs))
        inputs.close()
        pub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
