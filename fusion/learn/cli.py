"""The learning sub-commands: ``fusion train`` and ``fusion eval``.

``fusion train`` fits the model on the data set the arguments name (`fusion.learn.data`) with
`fusion.learn.train.train`, keeping ``best.pt`` and ``last.pt`` under ``--out`` and optionally
exporting the best as a small weights file; ``fusion eval`` scores a checkpoint on one part of a
data set (`fusion.learn.evaluate`): one mode or the ablation, and the health score's AUROC per
injected fault.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from fusion.learn.data import add_data_arguments, data_sets, resolve_precision
from fusion.learn.evaluate import ablation, fault_auroc, predict, score
from fusion.learn.train import export_weights, train
from fusion.model.config import astyx_config, sim_config

log = logging.getLogger(__name__)

#: Astyx network input (W, H): the 2048x618 camera at a quarter of its width, aspect kept.
ASTYX_INPUT_SIZE = (512, 160)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument(
        "--val-data",
        nargs="+",
        type=Path,
        metavar="REC.mcap",
        help="validation recordings (with --data)",
    )
    parser.add_argument(
        "--val-seeds",
        nargs="+",
        type=int,
        default=[100],
        help="validation drive seeds (with --sim-seeds)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/train"), help="output directory")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="Adam L2 penalty")
    parser.add_argument(
        "--camera-dropout",
        type=float,
        default=None,
        help="chance a training sample loses its camera (default: config)",
    )
    parser.add_argument(
        "--radar-dropout",
        type=float,
        default=None,
        help="chance a training sample loses its radar (default: config)",
    )
    parser.add_argument("--patience", type=int, default=6, help="early-stopping epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget")
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        default=ASTYX_INPUT_SIZE,
        metavar=("W", "H"),
        help="network input size for --astyx",
    )
    parser.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="W.pt",
        help="also write the best model as a small fp16 weights file",
    )


def run_train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if args.astyx is not None:
        cfg = astyx_config(input_w=args.input_size[0], input_h=args.input_size[1])
    else:
        cfg = sim_config()
    sets = data_sets(args, cfg, ("train", "val"))
    (train_items, train_what), (val_items, val_what) = sets["train"], sets["val"]
    log.info(
        "train: %s, %d frames; val: %s, %d frames",
        train_what,
        len(train_items),
        val_what,
        len(val_items),
    )
    cfg.extra = {"train": train_what, "val": val_what}
    if args.camera_dropout is not None:
        cfg.camera_dropout = args.camera_dropout
    if args.radar_dropout is not None:
        cfg.radar_dropout = args.radar_dropout
    result = train(
        cfg,
        train_items,
        val_items,
        args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        seed=args.seed,
        resume=args.resume,
        device=args.device,
        data_description=f"train: {train_what}; val: {val_what}",
        max_minutes=args.max_minutes,
        weight_decay=args.weight_decay,
        bf16=resolve_precision(args.precision) == "bf16",
    )
    print(
        f"best val mAP {result.best_metric:.4f} -> {result.best_path} "
        f"({result.epochs_run} epochs, {result.seconds / 60:.1f} min)"
    )
    if args.export is not None:
        export_weights(result.best_path, args.export)
        print(f"exported {args.export} ({args.export.stat().st_size / 1e6:.1f} MB)")
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights", type=Path, default=None, help="checkpoint (default: the committed sim weights)"
    )
    add_data_arguments(parser)
    parser.add_argument(
        "--part",
        default="test",
        choices=("train", "val", "test"),
        help="Astyx split part to evaluate (with --astyx)",
    )
    parser.add_argument("--mode", default="fused", choices=("fused", "camera_only", "radar_only"))
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="fused vs camera-only vs radar-only vs the DBSCAN radar baseline",
    )
    parser.add_argument("--faults", action="store_true", help="AUROC of the VAE health score")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--eval-precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto: what Detector uses on this CPU (bf16 where native)",
    )


def run_eval(args: argparse.Namespace) -> int:
    from fusion.model.detector import DEFAULT_WEIGHTS, load_checkpoint

    torch.set_num_threads(args.threads)
    model, state = load_checkpoint(args.weights or DEFAULT_WEIGHTS)
    cfg = model.cfg
    items, what = data_sets(args, cfg, (args.part,))[args.part]
    print(f"{args.weights or DEFAULT_WEIGHTS} (trained on {state.get('data', '?')})")
    print(f"evaluating on {what}: {len(items)} frames")
    precision = resolve_precision(args.eval_precision)
    report: dict = {
        "weights": str(args.weights or DEFAULT_WEIGHTS),
        "data": what,
        "precision": precision,
    }
    started = time.monotonic()
    if args.ablation:
        results = ablation(model, items, cfg.class_names, precision=precision)
    else:
        detections = predict(model, items, args.mode, precision=precision)[0]
        results = {args.mode: score(items, detections, cfg.class_names)}
    for name, result in results.items():
        print(f"\n== {name}\n{result.table()}")
    report["results"] = {name: r.to_dict() for name, r in results.items()}
    if args.faults:
        faults = fault_auroc(model, items, precision=precision)
        print("\n== VAE health score: AUROC faulty vs clean")
        for fault, v in faults.items():
            print(
                f"{fault:20s} AUROC {v['auroc']:.3f}  score clean {v['clean_mean']:.3f} "
                f"faulty {v['fault_mean']:.3f}"
            )
        report["faults"] = faults
    report["seconds"] = time.monotonic() - started
    print(f"\n({precision}, {report['seconds']:.0f} s)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0
