"""``fusion fleet replay`` and ``fusion fleet eval``: many recordings, one task each, on Ray.

    fusion fleet replay recordings/ --address local            # a local Ray, one task per core
    fusion fleet replay a.mcap b.mcap --address auto --json out/fleet.json   # a running cluster
    fusion fleet replay recordings/ --no-ray                   # the same replays here, no Ray
    fusion fleet eval recordings/ --weights A.safetensors B.safetensors   # exit 1 if B regresses
    fusion fleet eval recordings/ --commits main HEAD --no-ray       # two commits' code

A recording is a file path (read where it lies: every worker must see it, as on a shared file
system), a folder (its ``*.mcap``), or an object-store URI (``s3://``, ``gs://``: copied into
the task's scratch folder). Each is replayed in lock-step in a task (`fusion.fleet.replay`); the
table gives each recording's outcome and the set's. Exit status: 0 when every recording was
replayed whole (and, for ``eval``, nothing regressed), 1 otherwise (a damaged recording is
replayed up to its damage, and counts).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from fusion.fleet.compare import (
    Thresholds,
    comparison,
    comparison_table,
    figures,
    overall_figures,
)
from fusion.fleet.replay import RecordingResult, ReplayOptions, replay_all
from fusion.fleet.table import console, overall, print_results
from fusion.model.weights import DEFAULT_WEIGHTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="fleet_command", required=True)
    replay = sub.add_parser("replay", help="replay recordings in lock-step and tabulate them")
    _add_common(replay)
    replay.add_argument(
        "--weights", type=Path, default=DEFAULT_WEIGHTS, help="default: the committed sim weights"
    )
    replay.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="DIR",
        help="write each drive with the replay's Detections beside its messages to "
        "DIR/<name>.replayed.mcap (for fusion export foxglove|rerun); a folder every worker sees",
    )
    evaluate = sub.add_parser("eval", help="compare two models or commits on the same recordings")
    _add_common(evaluate)
    which = evaluate.add_mutually_exclusive_group(required=True)
    which.add_argument("--weights", type=Path, nargs=2, metavar=("A", "B"), help="B against A")
    which.add_argument(
        "--commits",
        nargs=2,
        metavar=("REV_A", "REV_B"),
        help="B against A: each commit's own code and weights, from a git worktree",
    )
    evaluate.add_argument(
        "--repo", type=Path, default=Path("."), help="the git repository of --commits"
    )
    limits = Thresholds()
    evaluate.add_argument("--max-ap-drop", type=float, default=limits.max_ap_drop)
    evaluate.add_argument("--max-p99-ratio", type=float, default=limits.max_p99_ratio)
    evaluate.add_argument("--min-p99-rise-ms", type=float, default=limits.min_p99_rise_ms)
    evaluate.add_argument("--max-extra-drops", type=int, default=limits.max_extra_drops)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recordings", nargs="+", help="recordings (.mcap), folders of them, URIs")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--address",
        default="local",
        help="local (start a Ray instance here; default), auto (the running cluster) or HOST:PORT",
    )
    where.add_argument("--no-ray", action="store_true", help="replay here, one after another")
    parser.add_argument(
        "--workers", type=int, default=None, help="CPUs of a local Ray instance (default: all)"
    )
    parser.add_argument("--end", type=float, default=None, metavar="S", help="first S seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per task")
    parser.add_argument(
        "--backend", default="torch", help="model backend (not auto: its choice is timed)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--max-retries", type=int, default=2, help="retries of a failed task")
    parser.add_argument("--json", type=Path, default=None, help="write everything here")
    parser.add_argument(
        "--inject-kill",
        action="append",
        default=[],
        metavar="NAME",
        help="fault injection (tests): the first attempt at recording NAME kills its worker",
    )


def expand(recordings: list[str]) -> list[str]:
    """Folders become their ``*.mcap`` (sorted); local paths absolute (a Ray worker does not
    start in this folder); URIs and missing paths stay as given (a missing one gives an error
    row)."""
    out = []
    for item in recordings:
        if "://" in item:
            out.append(item)
            continue
        path = Path(item).resolve()
        out += [str(p) for p in sorted(path.glob("*.mcap"))] if path.is_dir() else [str(path)]
    return out


def execute(
    args: argparse.Namespace, recordings: list[str], options: list[ReplayOptions]
) -> tuple[list[RecordingResult], dict]:
    """Run the jobs here or on Ray; returns the results and how they ran."""
    log = Console(stderr=True)

    def progress(result: RecordingResult) -> None:
        state = "ok" if result.ok else f"FAILED: {result.error}"
        log.print(f"done {result.name} ({result.attempts} attempt(s)): {state}")

    run = {"address": None if args.no_ray else args.address, "connect_s": 0.0}
    if args.no_ray:
        started = time.perf_counter()
        results = replay_all(recordings, options, progress)
        run["wall_s"] = time.perf_counter() - started
        return results, run
    import ray

    from fusion.fleet import cluster

    started = time.perf_counter()
    started_here = cluster.connect(args.address, args.workers)
    try:
        run["connect_s"] = time.perf_counter() - started
        run["cluster"] = cluster.cluster_info()
        started = time.perf_counter()
        results = cluster.run_fleet(
            recordings, options, args.max_retries, progress, inject_kill=args.inject_kill
        )
        run["wall_s"] = time.perf_counter() - started
    finally:
        if started_here:
            ray.shutdown()
    return results, run


def _options(args: argparse.Namespace, weights: Path) -> ReplayOptions:
    return ReplayOptions(
        weights=str(weights.resolve()),
        end_s=args.end,
        threads=args.threads,
        backend=args.backend,
        device=args.device,
        save_dir=str(args.save.resolve()) if getattr(args, "save", None) else None,
    )


def _write_json(path: Path | None, report: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))


def run(args: argparse.Namespace) -> int:
    if args.backend == "auto":
        print("fusion fleet: --backend auto is timed, so results could differ", file=sys.stderr)
        return 2
    recordings = expand(args.recordings)
    if args.fleet_command == "eval":
        return run_eval(args, recordings)
    options = _options(args, args.weights)
    results, how = execute(args, recordings, [options] * len(recordings))
    total = overall(results, how["wall_s"])
    title = f"fleet replay of {len(results)} recordings ({options.weights})"
    print_results(results, total, title, console())
    report = {"command": "replay", "options": asdict(options), "run": how}
    report |= {"recordings": [r.to_dict() for r in results], "overall": total}
    _write_json(args.json, report)
    return 0 if total["failed"] == total["damaged"] == 0 else 1


def run_eval(args: argparse.Namespace, recordings: list[str]) -> int:
    """B against A on every recording: two weights files in one run (so both see the same
    machine load), or two commits one after the other (`fusion.fleet.commits`)."""
    if args.commits:
        return _compare_commits(args, recordings)
    a, b = (_options(args, w) for w in args.weights)
    options = [a] * len(recordings) + [b] * len(recordings)
    results, how = execute(args, recordings * 2, options)
    side_a, side_b = results[: len(recordings)], results[len(recordings) :]
    sides = [
        (f"A: {a.weights}", side_a, overall(side_a, how["wall_s"])),
        (f"B: {b.weights}", side_b, overall(side_b, how["wall_s"])),
    ]
    report = {"command": "eval", "a": asdict(a), "b": asdict(b), "run": how}
    return _compare(args, sides, report)


#: Options of ``fusion fleet replay`` that a commit's run is given as they are.
PASSED_TO_COMMITS = ("end", "threads", "backend", "device", "max_retries", "workers")


def _compare_commits(args: argparse.Namespace, recordings: list[str]) -> int:
    from fusion.fleet.commits import replay_commits, results_of

    if not args.no_ray and args.address != "local":
        print("fusion fleet: --commits runs here or on --address local only", file=sys.stderr)
        return 2
    replay_args = ["--no-ray"] if args.no_ray else ["--address", "local"]
    for name in PASSED_TO_COMMITS:
        value = getattr(args, name)
        if value is not None:
            replay_args += [f"--{name.replace('_', '-')}", str(value)]
    reports = replay_commits(args.repo.resolve(), tuple(args.commits), recordings, replay_args)
    sides = [
        (f"{side}: {r['commit']['rev']} ({r['commit']['sha'][:12]})", results_of(r), r["overall"])
        for side, r in zip("AB", reports, strict=True)
    ]
    report = {"command": "eval", "a": reports[0]["commit"], "b": reports[1]["commit"]}
    return _compare(args, sides, report)


def _compare(
    args: argparse.Namespace, sides: list[tuple[str, list[RecordingResult], dict]], report: dict
) -> int:
    """Print both sides and B against A, write the JSON; 1 on a regression or a failure."""
    (title_a, side_a, total_a), (title_b, side_b, total_b) = sides
    limits = Thresholds(
        args.max_ap_drop, args.max_p99_ratio, args.min_p99_rise_ms, args.max_extra_drops
    )
    rows = comparison(
        [r.name for r in side_a] + ["all"],
        [figures(r) for r in side_a] + [overall_figures(total_a)],
        [figures(r) for r in side_b] + [overall_figures(total_b)],
        limits,
    )
    out = console()
    print_results(side_a, total_a, title_a, out)
    print_results(side_b, total_b, title_b, out)
    out.print(comparison_table(rows, f"B against A (limits: {limits})"))
    regressed = [row["recording"] for row in rows if row["regressions"]]
    out.print(f"regressions: {', '.join(regressed)}" if regressed else "no regression")
    report |= {"limits": asdict(limits), "comparison": rows}
    report |= {
        "results_a": [r.to_dict() for r in side_a],
        "results_b": [r.to_dict() for r in side_b],
        "overall_a": total_a,
        "overall_b": total_b,
    }
    _write_json(args.json, report)
    failed = total_a["failed"] + total_b["failed"]
    return 1 if regressed or failed else 0
