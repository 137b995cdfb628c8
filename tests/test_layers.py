"""The floors hold: no package imports a package on a floor above its own, and no modules import
each other in a circle (the import-linter contracts in pyproject.toml; docs/architecture.md)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

# In a process of its own: import-linter reconfigures logging, which would silence the loggers
# that other tests capture.
LINT = (
    "import sys\n"
    "from importlinter.cli import lint_imports\n"
    "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))\n"
)


def test_import_contracts_are_kept() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LINT], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
