"""The demo: the shipped drive replayed through the live process graph, then a report.

    make demo                                   # = python -m fusion.demo
    python -m fusion.demo --recording recordings/highway.mcap --rate 0.5 --out out/hw

Graph (each its own process, over ipc on this host, checked and started by
`fusion.runtime.launch`):

    player --camera, radar, calibration, ego_motion--> fusion node --detections--> recorder
                                   \\--> viewer <--------------------------/

The player waits until the fusion node has loaded and warmed up its model (it subscribes only
then, once the recorder and the viewer are connected to its output), plays the drive at real
time (telling the node the pace on ``replay_control``), and the graph stops when the drive
ends. The report prints capture -> detections latency per stage (p50/p95/p99/max), outputs per
mode, drops and budget misses, and the files written: the annotated video, the recording of the
outputs, each node's log, and ``report.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from fusion.errors import FusionError
from fusion.logs.player import recorded_topics
from fusion.report import report_from_recording
from fusion.runtime.graph import GraphSpec, NodeSpec, replay_graph
from fusion.runtime.launch import run_graph

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECORDING = REPO / "recordings" / "city.mcap"
PLAYED_TOPICS = ("camera", "radar", "calibration", "ego_motion")


def build_graph(args: argparse.Namespace, out: Path) -> GraphSpec:
    fusion_args = ["--budget-ms", str(args.budget_ms), "--device", args.device]
    fusion_args += ["--threads", str(args.threads)]
    if args.weights:
        fusion_args += ["--weights", args.weights]
    viewer = NodeSpec.of_module(
        "viewer",
        "nodes.viewer",
        ["-o", str(out / "annotated.mp4"), "--png-every", "100"],
        inputs=("calibration", "radar", "camera", "detections"),
        outputs=(),
    )
    pace = [] if args.lockstep else ["--rate", str(args.rate)]
    return replay_graph(
        "demo",
        args.recording,
        out,
        fusion_args,
        topics=recorded_topics(str(args.recording), PLAYED_TOPICS),
        lockstep=args.lockstep,
        player_args=[*pace, "--wait-subscribers-s", "120"],
        readers=() if args.no_viewer else (viewer,),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fusion.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--recording", type=Path, default=DEFAULT_RECORDING, help="drive to replay")
    parser.add_argument(
        "--out", type=Path, default=REPO / "out" / "demo", help="folder for the results"
    )
    parser.add_argument("--rate", type=float, default=1.0, help="replay speed (1 = real time)")
    parser.add_argument("--lockstep", action="store_true", help="deterministic lock-step replay")
    parser.add_argument("--budget-ms", type=float, default=50.0, help="fusion latency budget")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for the model")
    parser.add_argument("--weights", help="model checkpoint (default: the committed sim weights)")
    parser.add_argument("--no-viewer", action="store_true", help="skip the annotated video")
    parser.add_argument("--no-status", action="store_true", help="no live status table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.recording.exists():
        print(
            f"demo: {args.recording} not found; make it with the command in recordings/README.md",
            file=sys.stderr,
        )
        return 2
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("detections.mcap", "annotated.mp4"):
        (out / stale).unlink(missing_ok=True)
    t0 = time.monotonic()
    launcher = run_graph(
        build_graph(args, out),
        log_dir=out / "logs",
        status=not args.no_status,
        monitor_topics=["camera", "radar", "detections"],
        finish_grace_s=1.5,
    )
    wall_s = time.monotonic() - t0
    try:
        report = report_from_recording(str(out / "detections.mcap"))
    except FusionError as exc:
        print(
            f"demo: no detections recorded ({exc}); see the logs in {out / 'logs'}", file=sys.stderr
        )
        return 1
    restarts = {name: s.restarts for name, s in launcher.nodes.items() if s.restarts}
    summary = {
        "recording": str(args.recording),
        "wall_s": round(wall_s, 1),
        **report.as_dict(),
        "camera_frames_answered": len(report.camera_seqs),
        "restarts": restarts,
        "fusion_node_final": _final_line(out / "logs" / "fusion.log"),
        "model": _log_line(out / "logs" / "fusion.log", "warmed up: ")
        or "(see the fusion node's log)",
    }
    (out / "report.json").write_text(json.dumps(summary, indent=1))
    print(f"\nDemo on {args.recording.name}: {report.outputs} outputs in {wall_s:.0f} s")
    print(report.table())
    print(
        f"\nmodes {dict(report.modes)}; budget misses {report.budget_misses}; "
        f"invalid {report.invalid}; restarts {restarts or 'none'}"
    )
    print(f"fusion node: {summary['fusion_node_final']}")
    print(f"model: {summary['model']}")
    print(
        f"\nwrote {out / 'annotated.mp4'}, {out / 'detections.mcap'}, {out / 'report.json'}, "
        f"logs in {out / 'logs'}"
    )
    return 0


def _final_line(log_path: Path) -> str:
    return _log_line(log_path, "[fusion] final:")


def _log_line(log_path: Path, marker: str) -> str:
    """What follows `marker` on the last line of a node's log that holds it ('' if none): the
    fusion node logs its final counters and, once warmed up, its backend (chosen by measurement,
    and why) and the CPU's features."""
    if not log_path.exists():
        return ""
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if marker in line]
    return lines[-1].split(marker, 1)[1].strip() if lines else ""


if __name__ == "__main__":
    sys.exit(main())
