"""Command-line tools the tests drive (kubectl, checkov, ...), found the same way everywhere."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def require_tool(name: str, why: str, local: Path | None = None) -> str:
    """A command-line tool from `local` or PATH. Missing: the test fails in CI (CI=1, where
    .ci/run installs it) and is skipped elsewhere, saying why."""
    if local is not None and local.exists():
        return str(local)
    path = shutil.which(name)
    if path is None:
        message = f"`{name}` not found ({why})"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must install it")
        pytest.skip(message)
    return path
