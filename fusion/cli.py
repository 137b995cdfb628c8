"""The ``fusion`` command: one entry point, one sub-command per module.

Each sub-command lives in its own module as ``add_arguments(parser)`` and ``run(args) -> int``;
they are imported lazily so ``fusion info`` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fusion.errors import FusionError

#: sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sim": ("fusion.sim.cli", "simulate a drive into a recording"),
    "import": ("fusion.datasets.cli", "import a real dataset into a recording"),
    "info": ("fusion.logs.cli", "summarise a recording"),
    "play": ("fusion.logs.cli:play", "publish a recording's topics"),
    "record": ("fusion.logs.cli:record", "record topics to an MCAP file"),
    "recover": (
        "fusion.logs.cli:recover",
        "recover the complete chunks of a damaged recording",
    ),
    "train": ("fusion.learn.cli:train", "train the fusion model"),
    "eval": ("fusion.learn.cli:eval", "evaluate a model on a recording"),
    "export": ("fusion.views.cli:export", "write a recording for Foxglove or Rerun"),
    "view": ("fusion.views.cli:view", "show the running graph in Foxglove or Rerun"),
    "fleet": ("fusion.fleet.cli", "replay and evaluate many recordings on a Ray cluster"),
    "launch": ("fusion.runtime.launch", "start a node graph from YAML"),
    "keys": ("fusion.runtime.security", "make this host's CurveZMQ keys; authorise peers"),
}


def _load(spec: str):
    module_name, _, prefix = spec.partition(":")
    module = importlib.import_module(module_name)
    add = getattr(module, f"add_{prefix}_arguments" if prefix else "add_arguments")
    run = getattr(module, f"run_{prefix}" if prefix else "run")
    return add, run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="fusion", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (spec, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == wanted:
            add, run = _load(spec)
            add(p)
            p.set_defaults(_run=run)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args._run(args) or 0)
    except FusionError as exc:
        print(f"fusion {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
