"""Turn one benchmark run into ``REPORT.md``: machine, targets met or missed, end-to-end latency
per recording with histogram/CDF pictures, every ratio table, scaling tables and the profile's
top costs. Regressions against a saved run are pytest-benchmark's own check
(``--benchmark-compare`` / ``--benchmark-compare-fail``; ``make bench BASELINE=FILE``).

    python -m benchmarks.report benchmarks/results.json                 # after `make bench`
    python -m benchmarks.report gpu/results.json --ratios gpu/ratios.json --out gpu

Inputs: the pytest-benchmark JSON (``--benchmark-json``), the ratio tables the suite's conftest
saves (``benchmarks/ratios.json``) and the fusion node's py-spy samples from the lock-step runs
(``out/profiles/*.txt``, named in the results; see benchmarks/test_end_to_end.py).
Outputs: ``OUT/REPORT.md`` and ``OUT/figures/*.png`` (matplotlib, Agg backend).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NOTES = HERE / "report_notes.md"
STAGES = ("transport in", "sync", "preprocess", "model", "decode", "publish", "transport out")
TRANSPORT_TARGET = 1.2
RASTER_TARGET = 10.0
MODEL_TARGET_MS = {"cpu": 15.0, "cuda": 3.0}
MODEL_TARGET_RATIO = 0.5


# ---- inputs ---------------------------------------------------------------------------------


def gpu_model() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    result = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return (
        result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout else None
    )


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def by_name(results: dict) -> dict[str, dict]:
    return {b["fullname"]: b for b in results.get("benchmarks", [])}


def end_to_end(results: dict) -> list[dict]:
    return [
        b["extra_info"] for b in results.get("benchmarks", []) if b["extra_info"].get("end_to_end")
    ]


# ---- formatting -----------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def ratio_table(name: str, rows: dict, baseline: str, unit: str) -> list[str]:
    """One ratio table, columns in the order the benchmarks ran, the baseline first."""
    columns = [baseline]
    for values in rows.values():
        columns += [c for c in values if c not in columns]
    lines = [f"**{name}** ({unit}; in brackets the ratio to *{baseline}*)", ""]
    body = []
    for row, values in rows.items():
        base = values.get(baseline)
        cells = [row]
        for column in columns:
            if column not in values:
                cells.append("-")
            elif base:
                cells.append(f"{values[column]:.3g} ({values[column] / base:.2f}x)")
            else:
                cells.append(f"{values[column]:.3g}")
        body.append(cells)
    return [*lines, *markdown_table(["case", *columns], body), ""]


# ---- targets --------------------------------------------------------------------------------


def verdict(measured: float | None, target: float, higher_is_better: bool) -> str:
    if measured is None:
        return "not measured"
    met = measured >= target if higher_is_better else measured <= target
    if met:
        return "met"
    factor = target / measured if higher_is_better else measured / target
    return f"**missed, {factor:.2f}x off**" if factor < 10 else f"**missed, {factor:.0f}x off**"


def largest_stage(latency_ms: dict, percentile: str) -> str:
    """The stage with the largest `percentile`, as text (where a frame's time goes)."""
    present = [(latency_ms[s][percentile], s) for s in STAGES if s in latency_ms]
    if not present:
        return "-"
    value, stage = max(present)
    return f"{stage} {percentile} {value:.1f} ms"


def targets(results: dict, ratios: dict) -> list[list[str]]:
    """Rows: target, wanted, measured, verdict, where the time goes."""
    rows = []
    for info in end_to_end(results):
        name, device, lat = info["recording"], info["device"], info["latency_ms"]
        if info["mode"] == "real time":
            p99 = lat.get("capture -> detections", {}).get("p99")
            rows.append(
                [
                    f"real time p99 capture -> detections, {name} ({device})",
                    f"<= {info['target_p99_ms']:.0f} ms",
                    f"{fmt(p99)} ms",
                    verdict(p99, info["target_p99_ms"], higher_is_better=False),
                    f"largest stage: {largest_stage(lat, 'p99')}",
                ]
            )
            skipped = info["camera_input"].get("skipped", 0)
            stale = info["fusion_counters"].get("stale", 0)
            rows.append(
                [
                    f"real time drops, {name}",
                    "0",
                    f"{info['drops']} of {info['camera_published']}",
                    "met" if info["drops"] == 0 else f"**missed, {info['drops']} dropped**",
                    f"skipped while busy {skipped}, stale {stale}",
                ]
            )
        else:
            fps = info["frames_per_s"]
            rows.append(
                [
                    f"lock-step frames/s through the graph, {name} ({device})",
                    f">= {info['target_frames_per_s']:.0f}/s",
                    f"{fps:.1f}/s",
                    verdict(fps, info["target_frames_per_s"], higher_is_better=True),
                    f"largest stage: {largest_stage(lat, 'p50')}; fusion node CPU "
                    f"{fmt(info['cpu_percent'].get('fusion'), 0)} %",
                ]
            )
    tables = ratios.get("tables", {})
    transport = tables.get("transport round trip, ipc", {}).get("720p BGR", {})
    if transport.get("raw pyzmq") and "ours" in transport:
        factor = transport["ours"] / transport["raw pyzmq"]
        rows.append(
            [
                "transport, 1280x720 BGR over ipc, ours / raw pyzmq (round trip)",
                f"<= {TRANSPORT_TARGET}x",
                f"{factor:.2f}x",
                verdict(factor, TRANSPORT_TARGET, higher_is_better=False),
                "see the transport tables",
            ]
        )
    raster = tables.get("radar BEV raster 128x128", {}).get("10000 points", {})
    if raster.get("numba") and "numpy" in raster:
        speedup = raster["numpy"] / raster["numba"]
        rows.append(
            [
                "radar raster, 10k points, numba speed-up over numpy",
                f">= {RASTER_TARGET:.0f}x",
                f"{speedup:.1f}x",
                verdict(speedup, RASTER_TARGET, higher_is_better=True),
                "",
            ]
        )
    model = tables.get("model forward, batch 1, 2 threads", {})
    for case, values in model.items():
        fast = {k: v for k, v in values.items() if k not in ("eager_fp32", "torch")}
        if not fast or "eager_fp32" not in values:
            continue
        best = min(fast, key=fast.__getitem__)
        ratio = fast[best] / values["eager_fp32"]
        ok = fast[best] <= MODEL_TARGET_MS["cpu"] and ratio <= MODEL_TARGET_RATIO
        rows.append(
            [
                f"model forward p50, batch 1, {case} (fastest backend: {best})",
                f"<= {MODEL_TARGET_MS['cpu']:.0f} ms and <= {MODEL_TARGET_RATIO}x eager fp32",
                f"{fast[best]:.1f} ms, {ratio:.2f}x",
                "met" if ok else "missed",
                "see the model tables",
            ]
        )
    benches = by_name(results)
    bench = next((b for n, b in benches.items() if "test_forward_cuda_fp16" in n), None)
    if bench is not None:
        median_ms = bench["stats"]["median"] * 1e3
        rows.append(
            [
                "model forward p50, batch 1 (CUDA fp16)",
                f"<= {MODEL_TARGET_MS['cuda']:.0f} ms",
                f"{median_ms:.1f} ms",
                verdict(median_ms, MODEL_TARGET_MS["cuda"], higher_is_better=False),
                "see the model tables",
            ]
        )
    return rows


# ---- end to end -----------------------------------------------------------------------------


def latency_figure(info: dict, out_dir: Path) -> Path | None:
    samples = np.asarray(info.get("capture_to_detections_ms", []), dtype=float)
    if len(samples) == 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = info["target_p99_ms"]
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(10, 3.6))
    hist.hist(samples, bins=min(60, max(10, len(samples) // 4)), color="#3b75af")
    hist.axvline(target, color="#c03030", linestyle="--", label=f"p99 target {target:.0f} ms")
    hist.set_xlabel("capture -> detections (ms)")
    hist.set_ylabel("frames")
    hist.legend()
    ordered = np.sort(samples)
    fraction = np.arange(1, len(ordered) + 1) / len(ordered)
    cdf.plot(ordered, fraction, color="#3b75af", drawstyle="steps-post")
    cdf.axvline(target, color="#c03030", linestyle="--")
    cdf.axhline(0.99, color="grey", linestyle=":", label="p99")
    cdf.set_xlabel("capture -> detections (ms)")
    cdf.set_ylabel("fraction of frames")
    cdf.legend(loc="lower right")
    fig.suptitle(
        f"{info['recording']}: real-time replay, {info['device']}, "
        f"{len(samples)} outputs, p99 {np.percentile(samples, 99):.1f} ms"
    )
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"latency_{re.sub(r'[^A-Za-z0-9]+', '_', info['recording']).strip('_')}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def end_to_end_section(results: dict, out: Path) -> list[str]:
    runs = end_to_end(results)
    if not runs:
        return ["No end-to-end runs in these results (benchmarks/test_end_to_end.py).", ""]
    lines = []
    for stale in (out / "figures").glob("latency_*.png"):
        stale.unlink()
    real_time = [r for r in runs if r["mode"] == "real time"]
    lockstep = [r for r in runs if r["mode"] == "lock-step"]
    for info in real_time:
        lat = info["latency_ms"]
        lines += [
            f"### {info['recording']}, real time ({info['device']})",
            "",
            f"{info['outputs']} outputs for {info['camera_published']} camera frames published: "
            f"**{info['drops']} dropped**, {info['budget_misses']} budget misses "
            f"(budget {info['budget_ms']:.0f} ms), modes {info['modes']}; "
            f"fusion node counters {info['fusion_counters'] or 'none'}; camera input "
            f"{_camera_input(info['camera_input'])}; load average at start "
            f"{fmt(info.get('load_avg_1m'), 2)}.",
            "",
        ]
        rows = []
        for stage in (*STAGES, "capture -> detections", "capture -> recorded"):
            if stage in lat:
                p = lat[stage]
                rows.append(
                    [stage, *(fmt(p[k]) for k in ("p50", "p95", "p99", "max")), str(p["n"])]
                )
        lines += markdown_table(["stage", "p50 ms", "p95 ms", "p99 ms", "max ms", "n"], rows)
        figure = latency_figure(info, out / "figures")
        if figure is not None:
            lines += ["", f"![latency {info['recording']}]({figure.relative_to(out).as_posix()})"]
        lines.append("")
    if lockstep:
        processes = sorted({p for r in lockstep for p in r["cpu_percent"]})
        rows = [
            [
                info["recording"],
                info["device"],
                str(info["outputs"]),
                f"{info['frames_per_s']:.1f}",
                f"{info['target_frames_per_s']:.0f}",
                str(info["lockstep_timeouts"]),
                *(fmt(info["cpu_percent"].get(p)) for p in processes),
                fmt(sum(info["cpu_percent"].values())),
            ]
            for info in lockstep
        ]
        header = ["recording", "device", "outputs", "frames/s", "target"]
        header += ["timeouts", *(f"CPU % {p}" for p in processes), "CPU % all"]
        lines += [
            "### Lock-step, as fast as the graph answers",
            "",
            "Frames/s = (outputs - 1) / time between the first and last output the recorder "
            "logged; CPU in % of one core over that window (200 % = both cores of a 2-core "
            "machine).",
            "",
            *markdown_table(header, rows),
            "",
        ]
        stage_rows = []
        for info in lockstep:
            lat = info["latency_ms"]
            stage_rows.append(
                [info["recording"], *(fmt(lat.get(s, {}).get("p50")) for s in STAGES)]
            )
        lines += [
            "Per-frame stage p50 in lock-step (ms), where the time of a frame goes when nothing "
            "waits:",
            "",
            *markdown_table(["recording", *STAGES], stage_rows),
            "",
        ]
    return lines


def _camera_input(counters: dict) -> str:
    if not counters:
        return "-"
    keys = ("received", "delivered", "skipped", "lost")
    return ", ".join(f"{k} {counters[k]}" for k in keys if k in counters)


# ---- profile --------------------------------------------------------------------------------


#: Where a profile sample goes, by the first of these functions found on its stack.
PROFILE_STAGES = (
    ("decode_jpeg", "JPEG decode"),
    ("radar_points", "radar motion compensation"),
    ("Detector.preprocess", "preprocess"),
    ("Detector.infer", "model"),
    ("Detector.decode", "decode"),
    ("Publisher.send", "publish"),
    ("Inputs.poll", "receive"),
)


def profile_summary(path: Path, top: int = 8) -> tuple[list[str], tuple[str, float] | None]:
    """The steady-state loop's samples (py-spy raw) by pipeline stage and by the innermost
    project function."""
    innermost: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit() or "build_detector" in stack:
            continue
        if "main (nodes/fusion_node.py" not in stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        ours = [f for f in frames if "(fusion/" in f or "(nodes/" in f]
        innermost[ours[-1] if ours else frames[-1]] += count
        stage = next((name for fn, name in PROFILE_STAGES if f";{fn} (" in stack), "other")
        stages[stage] += count
    if total == 0:
        return [], None
    stage_rows = [[stage, f"{100 * n / total:.1f}"] for stage, n in stages.most_common()]
    rows = [[f"`{frame}`", f"{100 * n / total:.1f}"] for frame, n in innermost.most_common(top)]
    top_frame, top_count = innermost.most_common(1)[0]
    lines = [
        f"**{path.stem}**: {total} samples of the fusion node's loop (py-spy, 100 Hz, start-up "
        "excluded), by stage and by the innermost function of this project on the stack:",
        "",
        *markdown_table(["stage", "% of samples"], stage_rows),
        "",
        *markdown_table(["innermost project function", "% of samples"], rows),
        "",
    ]
    return lines, (top_frame, 100 * top_count / total)


# ---- the report -----------------------------------------------------------------------------


def cpu_features() -> str:
    """The vector features that decide the model's backends (the cores and bf16 support)."""
    from fusion.model.backends import cpu_summary

    return cpu_summary().split(", ", 1)[-1]


def cpu_name() -> str:
    from fusion.model.backends import cpu_name

    return cpu_name()


def machine_lines(results: dict) -> list[str]:
    when = results.get("datetime", dt.datetime.now(dt.UTC).isoformat())
    commit = results.get("commit_info", {})
    cores = os.cpu_count()
    memory = memory_gib()
    line = f"- CPU: {cpu_name()}, {cores} cores"
    if memory:
        line += f", {memory:.0f} GiB memory"
    lines = [line, f"- CPU features: {cpu_features()}"]
    backends = {
        b["extra_info"]["backend"]
        for b in results.get("benchmarks", [])
        if "backend" in b.get("extra_info", {})
    }
    if backends:
        lines.append(f"- model backend chosen by measurement: {', '.join(sorted(backends))}")
    gpu = gpu_model()
    if gpu:
        lines.append(f"- GPU: {gpu}")
    lines += [
        f"- run: {when[:19].replace('T', ' ')} UTC; commit {commit.get('id', '?')[:10]}"
        + (" (with uncommitted changes)" if commit.get("dirty") else ""),
        f"- Python {platform.python_version()}, {platform.system()} {platform.release()}",
    ]
    loads = [info["load_avg_1m"] for info in end_to_end(results) if "load_avg_1m" in info]
    if loads:
        lines.append(
            f"- load average (1 min) when the end-to-end runs started: {min(loads):.1f} to "
            f"{max(loads):.1f} (above the core count means other work shared the CPUs)"
        )
    return lines


def build_report(
    results: dict,
    ratios: dict,
    out: Path,
    profiles: list[Path],
) -> str:
    lines = [
        "# Benchmark report",
        "",
        "Generated by `python -m benchmarks.report` from one run of `make bench` "
        "(see docs/benchmarks.md); every ratio compares figures measured in the same run.",
        "",
        "## Machine",
        "",
        *machine_lines(results),
        "",
        "## Targets (DESIGN.md)",
        "",
    ]
    target_rows = targets(results, ratios)
    header = ["target", "wanted", "measured", "verdict", "where the time goes"]
    lines += [*markdown_table(header, target_rows), ""]
    lines += ["## End to end", "", *end_to_end_section(results, out)]
    top_costs = []
    if not profiles and any(i["mode"] == "lock-step" for i in end_to_end(results)):
        lines += ["No profile of the fusion node in this run (install py-spy to get one).", ""]
    if profiles:
        lines += ["## Profile of the fusion node (py-spy, lock-step)", ""]
        for path in profiles:
            section, top = profile_summary(path)
            lines += section
            if top:
                top_costs.append((path.stem, *top))
    tables = ratios.get("tables", {})
    component = {k: v for k, v in tables.items() if not k.startswith(("scaling", "end-to-end"))}
    scaling = {k: v for k, v in tables.items() if k.startswith("scaling")}
    for title, group in (("Components", component), ("Scaling", scaling)):
        if group:
            lines += [f"## {title}", ""]
            for name, rows in group.items():
                lines += ratio_table(
                    name, rows, ratios["baselines"][name], ratios["units"].get(name, "ms")
                )
    if NOTES.exists():
        lines += ["## Analysis", "", NOTES.read_text().strip(), ""]
    lines += ["## Closing note", "", *closing_note(results, target_rows, top_costs), ""]
    return "\n".join(lines)


def closing_note(results: dict, target_rows: list[list[str]], top_costs: list) -> list[str]:
    missed = [row[0] for row in target_rows if row[3].startswith("**missed")]
    lines = [f"{len(target_rows) - len(missed)} of {len(target_rows)} targets met (table above)."]
    shares: Counter[str] = Counter()
    totals = []
    for info in end_to_end(results):
        lat = info["latency_ms"]
        as_shipped = not info.get("variant")
        if as_shipped and info["mode"] == "real time" and "capture -> detections" in lat:
            totals.append(lat["capture -> detections"]["p50"])
            for stage in STAGES:
                if stage in lat:
                    shares[stage] += lat[stage]["p50"]
    if shares and totals:
        stage, total_ms = shares.most_common(1)[0]
        mean_ms = total_ms / len(totals)
        lines.append(
            f"The biggest remaining cost is the **{stage}** stage: p50 {mean_ms:.1f} ms per "
            f"frame on average over the recordings, {100 * mean_ms / np.mean(totals):.0f} % of "
            "capture -> detections at real time."
        )
    runs = end_to_end(results)
    for info in runs:
        if not info.get("variant"):
            continue
        base_name = info["recording"].split(", ")[0]
        base = next(
            (r for r in runs if r["recording"] == base_name and r["mode"] == info["mode"]), None
        )
        if base is None:
            continue
        if info["mode"] == "real time":
            old = base["latency_ms"].get("capture -> detections", {}).get("p99")
            new = info["latency_ms"].get("capture -> detections", {}).get("p99")
            what = "p99 capture -> detections"
            unit = "ms"
        else:
            old, new, what, unit = base["frames_per_s"], info["frames_per_s"], "frames/s", "/s"
        if old and new:
            lines.append(
                f"With {info['variant']} for the fusion node, {base_name} {info['mode']} "
                f"{what} goes from {old:.1f} {unit} to {new:.1f} {unit} ({new / old:.2f}x)."
            )
    for name, frame, share in top_costs:
        lines.append(
            f"In the {name} profile, {share:.0f} % of the loop's samples are in `{frame}`."
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("results", type=Path, help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("--ratios", type=Path, default=HERE / "ratios.json", help="ratio tables")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for REPORT.md and figures/")
    args = parser.parse_args(argv)
    try:
        results = json.loads(args.results.read_text())
        ratios = json.loads(args.ratios.read_text()) if args.ratios.exists() else {}
    except (OSError, json.JSONDecodeError) as exc:
        print(f"benchmarks.report: cannot read the results: {exc}", file=sys.stderr)
        return 2
    profiles = [
        REPO / info["profile"]
        for info in end_to_end(results)
        if info.get("profile") and (REPO / info["profile"]).exists()
    ]
    text = build_report(results, ratios, args.out, profiles)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "REPORT.md").write_text(text)
    print(f"wrote {args.out / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
