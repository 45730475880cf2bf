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


def browser_missing(what: str, tests: str = "the browser tests") -> None:
    """Skip where no browser can run here; under CI (CI=1) it must, so fail instead."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"{what}; CI must run {tests}")
    pytest.skip(what)


def launch(playwright):
    """Chromium through playwright; raises RuntimeError naming what is missing."""
    path = chromium_path()
    if path is None:
        raise RuntimeError("no chromium (apt-get install chromium; .ci/run installs it)")
    return playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)


_TIMING = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const resources = performance.getEntriesByType("resource");
  const sum = (key) => nav[key] + resources.reduce((total, r) => total + r[key], 0);
  return {first_byte_ms: nav.responseStart - nav.startTime,
          dom_ready_ms: nav.domContentLoadedEventEnd - nav.startTime,
          load_ms: nav.loadEventEnd - nav.startTime,
          transferred_bytes: sum("transferSize"), body_bytes: sum("decodedBodySize"),
          requests: 1 + resources.length};
}"""


def measure(browser, url: str, viewport: dict | None = None) -> dict:
    """Load `url` in a fresh context (an empty cache, as on a first visit) and return the
    browser's own navigation timing and the bytes it downloaded (the page and everything it
    loaded: headers and bodies, `transferSize`), with the console errors seen."""
    context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    response = page.goto(url, wait_until="load")
    page.wait_for_function("performance.getEntriesByType('navigation')[0].loadEventEnd > 0")
    figures = page.evaluate(_TIMING)
    context.close()
    return {"status": response.status if response else None, "errors": errors, **figures}
