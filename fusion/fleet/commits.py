"""``fusion fleet eval --commits REV_A REV_B``: the same recordings through two commits' code.

Each revision is checked out with ``git worktree add --detach`` into a temporary folder, and
that tree's own ``fusion fleet replay`` runs there (``python -m fusion.cli`` with the tree first
on ``PYTHONPATH``: its code and its committed default weights) and writes its JSON report; the
worktree is removed afterwards. The two reports are then compared as two weights files are.

Limits: both runs use this Python environment, so a commit that needs other packages cannot be
compared this way; a revision from before ``fusion fleet`` existed cannot run it; and the
workers must import the tree's code, which holds here (``--no-ray``) and for a Ray instance the
run starts itself (``--address local``: its workers inherit ``PYTHONPATH``), not for a running
cluster, whose workers have their own code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fusion.errors import ConfigError, FusionError
from fusion.fleet.replay import RecordingResult

#: The longest one commit's replay may take (its recordings, on busy cores).
COMMIT_TIMEOUT_S = 6 * 3600.0
#: The last characters of a failed run's output shown in the error.
OUTPUT_TAIL_CHARS = 2000


def git(repo: Path, *args: str) -> str:
    """Run git in `repo`; a failure is a `ConfigError` with git's own message."""
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ConfigError(f"git {' '.join(args)} in {repo} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def replay_commit(
    repo: Path, rev: str, recordings: list[str], replay_args: list[str], workdir: Path
) -> dict:
    """The JSON report of ``fusion fleet replay RECORDINGS REPLAY_ARGS`` run by commit `rev`'s
    code (see the module docstring)."""
    sha = git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}")
    tree = workdir / f"tree-{sha[:12]}"
    out = workdir / f"{sha[:12]}.json"
    git(repo, "worktree", "add", "--detach", str(tree), sha)
    try:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "fusion.cli", "fleet", "replay", *recordings]
        done = subprocess.run(
            [*argv, *replay_args, "--json", str(out)],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMIT_TIMEOUT_S,
            check=False,
        )
        if not out.exists():
            tail = (done.stdout + done.stderr)[-OUTPUT_TAIL_CHARS:]
            raise FusionError(
                f"commit {rev} ({sha[:12]}) could not run `fusion fleet replay` (exit "
                f"{done.returncode}); does it have it?\n{tail}"
            )
        report = json.loads(out.read_text())
    finally:
        git(repo, "worktree", "remove", "--force", str(tree))
    report["commit"] = {"rev": rev, "sha": sha}
    return report


def results_of(report: dict) -> list[RecordingResult]:
    """A replay report's rows as results (without the per-frame samples)."""
    names = {f.name for f in dataclasses.fields(RecordingResult)}
    return [
        RecordingResult(**{k: v for k, v in row.items() if k in names})
        for row in report["recordings"]
    ]


def replay_commits(
    repo: Path, revs: tuple[str, str], recordings: list[str], replay_args: list[str]
) -> list[dict]:
    """Both commits' reports, one after the other (each in its own worktree)."""
    with tempfile.TemporaryDirectory(prefix="fusion-fleet-commits-") as workdir:
        return [replay_commit(repo, rev, recordings, replay_args, Path(workdir)) for rev in revs]
