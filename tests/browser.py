"""A real headless browser for the tests and the screenshots: Debian's chromium driven by
playwright (`playwright install` downloads a browser, which cannot work here)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def chromium_path() -> str | None:
    found = os.environ.get("RECSYS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return found if Path(found).exists() else None


def launch(playwright):
    """Chromium through playwright; raises RuntimeError naming what is missing."""
    path = chromium_path()
    if path is None:
        raise RuntimeError("no chromium (apt-get install chromium; .ci/run installs it)")
    return playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
