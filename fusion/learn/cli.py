"""The learning sub-commands: ``fusion train`` and ``fusion eval``.

``fusion train`` builds a `TrainConfig` from its flags (printed at the start), makes the data
set's `FeatureSet` (cached) and runs `fusion.learn.train.train`, keeping ``best.safetensors`` and
``last.safetensors`` under ``--out``; ``--kfold K`` instead cross-validates over whole Astyx runs
and reports the mean and spread. ``fusion eval`` scores weights on one part of a data set
(`fusion.learn.evaluate`): one mode or the ablation, the health score's AUROC per injected fault,
or (``--replay``) a recording replayed through the running fusion node (`fusion.learn.replay`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import statistics
import time
from pathlib import Path

import torch

from fusion.errors import ConfigError
from fusion.learn.config import TrainConfig
from fusion.learn.data import astyx_folds, astyx_frames, astyx_split, recording_frames, sim_frames
from fusion.learn.features import FeatureSet, cached_features, concatenate
from fusion.model.config import ModelConfig, astyx_config, sim_config
from fusion.model.replicas import Replicas

log = logging.getLogger(__name__)

#: Astyx network input (W, H): the 2048x618 camera at a quarter of its width.
ASTYX_INPUT_SIZE = (512, 160)


# --------------------------------------------------------------------------- data sets


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    src = parser.add_mutually_exclusive_group(required=required)
    src.add_argument("--data", nargs="+", type=Path, metavar="REC.mcap", help="recordings")
    src.add_argument(
        "--astyx",
        nargs="?",
        const="",
        metavar="DIR",
        help="Astyx HiRes2019 directory (default: ../shared/realdata/astyx_hires2019)",
    )
    src.add_argument(
        "--sim-seeds", nargs="+", type=int, metavar="SEED", help="simulate drives in memory"
    )
    parser.add_argument("--sim-duration", type=float, default=20.0, metavar="S")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path("runs/cache"), help="feature cache ('' = none)"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")


def astyx_part(
    root: str, indices: list[int], name: str, cfg: ModelConfig, cache: Path | None
) -> FeatureSet:
    what = f"astyx {name} ({len(indices)} frames, {indices[0]}-{indices[-1]})"
    size = (cfg.input_w, cfg.input_h)
    return cached_features(what, lambda: astyx_frames(root or None, indices, size), cfg, cache)


def data_part(args: argparse.Namespace, cfg: ModelConfig, part: str) -> FeatureSet:
    """Part ``train``, ``val`` or ``test`` of the data set the arguments name."""
    cache = args.cache_dir if str(args.cache_dir) else None
    size = (cfg.input_w, cfg.input_h)
    if args.astyx is not None:
        split = astyx_split(args.astyx or None)
        return astyx_part(args.astyx, split[part], part, cfg, cache)
    if args.data is not None:
        paths = args.data if part != "val" else (getattr(args, "val_data", None) or [])
        if not paths:
            raise SystemExit("--data needs --val-data RECORDINGS for validation")
        sets = [
            cached_features(
                f"recording {Path(p).resolve()} {Path(p).stat().st_mtime_ns}",
                lambda p=p: recording_frames(p, size),
                cfg,
                cache,
            )
            for p in paths
        ]
        return concatenate(sets)
    seeds = args.sim_seeds if part != "val" else args.val_seeds
    step = getattr(args, "sim_frame_step", 4)
    what = f"sim seeds {list(seeds)} {args.sim_duration:g} s every {step}th frame"
    return cached_features(
        what, lambda: sim_frames(seeds, size, args.sim_duration, step), cfg, cache
    )


def model_config(args: argparse.Namespace) -> ModelConfig:
    if args.astyx is not None:
        w, h = args.input_size or ASTYX_INPUT_SIZE
        return astyx_config(input_w=w, input_h=h)
    if args.input_size:
        return sim_config(input_w=args.input_size[0], input_h=args.input_size[1])
    return sim_config()


# --------------------------------------------------------------------------- fusion train


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    defaults = TrainConfig()
    parser.add_argument("--val-data", nargs="+", type=Path, metavar="REC.mcap")
    parser.add_argument("--val-seeds", nargs="+", type=int, default=list(defaults.sim_val_seeds))
    parser.add_argument("--sim-frame-step", type=int, default=defaults.sim_frame_step)
    parser.add_argument("--out", type=Path, default=Path(defaults.out), help="output directory")
    for name in ("epochs", "batch_size", "patience", "seed"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name)
        )
    for name in ("lr", "weight_decay", "ema_decay", "max_minutes"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name)
        )
    parser.add_argument(
        "--train-on",
        default=defaults.astyx_train_on,
        choices=("train", "train+val"),
        help="Astyx: train on the train part, or on train and val (validating on val still)",
    )
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("W", "H"), default=None)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--export", type=Path, default=None, metavar="W.safetensors", help="copy the best weights"
    )
    parser.add_argument(
        "--kfold",
        type=int,
        default=0,
        metavar="K",
        help="Astyx: cross-validate over whole runs of frames 0-445 instead, report mean/spread",
    )


def train_config(args: argparse.Namespace) -> TrainConfig:
    data = "astyx" if args.astyx is not None else "recordings" if args.data else "sim"
    return TrainConfig(
        data=data,
        astyx_root=args.astyx or "",
        astyx_train_on=args.train_on,
        recordings=tuple(str(p) for p in args.data or ()),
        val_recordings=tuple(str(p) for p in args.val_data or ()),
        sim_seeds=tuple(args.sim_seeds or TrainConfig.sim_seeds),
        sim_val_seeds=tuple(args.val_seeds),
        sim_duration_s=args.sim_duration,
        sim_frame_step=args.sim_frame_step,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        ema_decay=args.ema_decay,
        patience=args.patience,
        max_minutes=args.max_minutes,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        out=str(args.out),
        cache_dir=str(args.cache_dir),
        progress=not args.no_progress,
    )


def run_train(args: argparse.Namespace) -> int:
    """Train on this process, or, under torchrun, on every process it started
    (`fusion.learn.distributed`)."""
    from fusion.learn import distributed

    replicas = distributed.start(args.device)
    try:
        return _train(args, replicas)
    finally:
        distributed.stop()


def _train(args: argparse.Namespace, replicas: Replicas) -> int:
    from fusion.learn import distributed
    from fusion.learn.train import train

    torch.set_num_threads(args.threads)
    main = replicas.rank == 0
    cfg = model_config(args)
    tcfg = train_config(args)
    if main:
        print(tcfg.describe(), flush=True)
    started = time.monotonic()
    if args.kfold:
        if replicas.distributed:
            raise ConfigError("--kfold trains its folds one after another; run it without torchrun")
        return run_kfold(args, cfg, tcfg)
    with distributed.first_alone(replicas):  # the first process fills the feature cache
        train_set = data_part(args, cfg, "train")
        val_set = data_part(args, cfg, "val")
    if args.astyx is not None and tcfg.astyx_train_on == "train+val":
        train_set = concatenate([train_set, val_set])
    if main:
        print(
            f"train: {train_set.description}: {len(train_set)} frames; "
            f"val: {val_set.description}: {len(val_set)} frames "
            f"(features ready in {time.monotonic() - started:.0f} s)"
            + (f"; {replicas.size} processes" if replicas.distributed else ""),
            flush=True,
        )
    result = train(cfg, tcfg, train_set, val_set, resume=args.resume)
    if not main:
        return 0
    best = max(result.history, key=lambda r: r["val_mean_ap"]) if result.history else {}
    print(
        f"best val mean AP {result.best_metric:.4f} (epoch {best.get('epoch')}, "
        + ", ".join(f"{k[4:]} {v:.3f}" for k, v in best.items() if k.startswith("val_ap"))
        + f") -> {result.best_path}; {result.epochs_run} epochs, "
        f"{(time.monotonic() - started) / 60:.1f} min in all"
    )
    if args.export is not None:
        args.export.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.best_path, args.export)
        print(f"exported {args.export} ({args.export.stat().st_size / 1e6:.1f} MB)")
    return 0


def run_kfold(args: argparse.Namespace, cfg: ModelConfig, tcfg: TrainConfig) -> int:
    """Train on k-1 folds of whole Astyx runs (frames 0-445), score the held-out fold with the
    final weights (no selection on it), and report each fold and the mean and spread."""
    from fusion.learn.evaluate import ablation
    from fusion.learn.train import train

    if args.astyx is None:
        raise SystemExit("--kfold cross-validates over Astyx runs; add --astyx")
    cache = args.cache_dir if str(args.cache_dir) else None
    folds = astyx_folds(args.kfold, args.astyx or None)
    every = sorted(i for fold in folds for i in fold)
    full = astyx_part(args.astyx, every, "all", cfg, cache)
    position = {int(f.key.rsplit("/", 1)[1]): k for k, f in enumerate(full.frames)}
    rows = []
    for k, fold in enumerate(folds):
        held = [position[i] for i in fold if i in position]
        rest = [position[i] for i in every if i not in set(fold) and i in position]
        fold_cfg = dataclasses.replace(tcfg, out=str(Path(tcfg.out) / f"fold{k}"))
        fold_cfg.patience = fold_cfg.epochs  # no early stopping on the held-out fold
        result = train(cfg, fold_cfg, full.subset(rest), full.subset(held))
        from fusion.model.weights import load_weights

        model, _ = load_weights(Path(fold_cfg.out) / "final.safetensors")
        results = ablation(model, full.subset(held), cfg.class_names)
        row = {"fold": k, "frames": f"{fold[0]}-{fold[-1]}", "epochs": result.epochs_run}
        for name, r in results.items():
            row[f"{name}_map"], row[f"{name}_ap1"] = r.mean_ap, r.ap_at(1.0)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n== k-fold cross-validation, cars, DESIGN.md protocol (mean +- std over folds)")
    for key in [k for k in rows[0] if k.endswith(("_map", "_ap1"))]:
        values = [r[key] for r in rows]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{key:32s} {statistics.mean(values):.3f} +- {spread:.3f}  {values}")
    out = Path(tcfg.out) / "kfold.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"-> {out}")
    return 0


# --------------------------------------------------------------------------- fusion eval


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, default=None, help="default: the sim weights")
    add_data_arguments(parser, required=False)
    parser.add_argument("--val-seeds", nargs="+", type=int, default=[100])
    parser.add_argument("--sim-frame-step", type=int, default=4)
    parser.add_argument("--part", default="test", choices=("train", "val", "test"))
    parser.add_argument("--mode", default="fused", choices=("fused", "camera_only", "radar_only"))
    parser.add_argument("--ablation", action="store_true", help="all modes + DBSCAN baseline")
    parser.add_argument("--faults", action="store_true", help="AUROC of the health score")
    parser.add_argument(
        "--replay",
        type=Path,
        default=None,
        metavar="REC.mcap",
        help="replay this recording through the running fusion node in lock-step and score it",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")


def run_eval(args: argparse.Namespace) -> int:
    from fusion.learn.evaluate import ablation, fault_auroc, predict, score
    from fusion.model.weights import DEFAULT_WEIGHTS, load_weights

    torch.set_num_threads(args.threads)
    weights = args.weights or DEFAULT_WEIGHTS
    if args.replay is not None:
        from fusion.learn.replay import run_replay_eval

        return run_replay_eval(args, weights)
    if args.astyx is None and args.data is None and args.sim_seeds is None:
        raise SystemExit("name the frames to score: --astyx, --data, --sim-seeds or --replay")
    model, metadata = load_weights(weights)
    cfg = model.cfg
    features = data_part(args, cfg, args.part)
    print(f"{weights} (trained on {metadata.get('data', '?')})")
    print(f"evaluating on {features.description}: {len(features)} frames")
    report: dict = {"weights": str(weights), "data": features.description}
    started = time.monotonic()
    if args.ablation:
        results = ablation(model, features, cfg.class_names)
    else:
        results = {
            args.mode: score(
                features.frames, predict(model, features, args.mode)[0], cfg.class_names
            )
        }
    for name, result in results.items():
        print(f"\n== {name}\n{result.table()}")
    report["results"] = {name: r.to_dict() for name, r in results.items()}
    if args.faults:
        faults = fault_auroc(model, features.frames)
        print("\n== health score: AUROC faulty vs clean (VAE + cues; VAE alone)")
        for fault, v in faults.items():
            print(
                f"{fault:20s} AUROC {v['auroc']:.3f}  VAE alone {v['auroc_vae']:.3f}  "
                f"flagged {v['flagged']:.0%} (clean frames flagged {v['clean_flagged']:.0%})"
            )
        report["faults"] = faults
    report["seconds"] = time.monotonic() - started
    print(f"\n({report['seconds']:.0f} s)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0
