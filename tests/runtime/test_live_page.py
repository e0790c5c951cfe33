"""The live page in a real browser against a real daemon: start a task, see the plan, e-stop.

Chromium comes from the system (Debian's /usr/bin/chromium, or AIMG_CHROMIUM), driven by
Playwright's Python package; no browser is downloaded. Screenshots land in
<repo>/test-artifacts/live-page-*.png for a person to look at.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
from daemon_fixtures import REPO_ROOT, TASK_END_TIMEOUT_S, run_daemon

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cell")]

ARTIFACTS = REPO_ROOT / "test-artifacts"
PLAN_TIMEOUT_MS = 240_000  # model load is done; a first plan on a loaded 2-core box is slow
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str | None:
    candidates = [os.environ.get("AIMG_CHROMIUM"), "/usr/bin/chromium"]
    candidates += [shutil.which(name) for name in ("chromium", "chromium-browser")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install 'aimg[dev]')"
    )
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium (apt install chromium, or set AIMG_CHROMIUM=/path/to/chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def daemon(browser, tmp_path_factory):
    # A long task limit, so the task still runs when the page e-stops it.
    overrides = {"tasks.max_duration_s": 300}
    with run_daemon(tmp_path_factory.mktemp("live-daemon"), overrides) as running:
        yield running


@pytest.fixture
def page(browser, daemon):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{daemon.url}/#token={daemon.token}")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the live page: {errors}"


def _screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"live-page-{name}.png"), full_page=True)


def _distance_mm(a: list[float], b: list[float]) -> float:
    return 1000.0 * math.dist(a, b)


def test_the_token_leaves_the_address_bar_and_stays_in_the_tab(page, daemon):
    page.wait_for_function("document.querySelector('#state').textContent === 'idle'")
    assert "token" not in page.url
    assert page.evaluate("sessionStorage.getItem('aimg.token')") == daemon.token
    assert page.is_hidden("#token-box")


def test_a_task_started_on_the_page_draws_its_plan_and_the_estop_holds_the_arm(page, daemon):
    daemon.make_idle()
    page.wait_for_function("document.querySelector('#state').textContent === 'idle'")
    page.fill("#instruction", "reach the red cube")
    page.click("#start")
    page.wait_for_function("document.querySelector('#state').textContent === 'running'")
    page.wait_for_function(
        "Number(document.querySelector('#plan-count').textContent) >= 1 && "
        "[...document.querySelectorAll('canvas[data-view]')]"
        ".some(c => Number(c.dataset.planPoints) > 0)",
        timeout=PLAN_TIMEOUT_MS,
    )
    page.wait_for_timeout(1000)  # a few more frames, so the executed path shows too
    assert page.locator("#strips img").count() >= 1
    # every view draws the workspace box and the tool's axes through the calibration
    drawn = page.evaluate(
        "[...document.querySelectorAll('canvas[data-view]')]"
        ".map(c => [Number(c.dataset.boxEdges), Number(c.dataset.toolAxes)])"
    )
    assert drawn and all(edges >= 4 and axes == 3 for edges, axes in drawn), drawn
    assert page.inner_text("#calibration").startswith("no calibration file")
    _screenshot(page, "running")

    page.click("#estop")
    page.wait_for_function(
        "document.querySelector('#state').textContent === 'estopped'", timeout=10_000
    )
    assert page.inner_text("#error") == ""
    before = daemon.status()["arm"]["position_m"]
    page.wait_for_timeout(500)
    after = daemon.status()["arm"]["position_m"]
    assert _distance_mm(before, after) < 2.0, (before, after)
    assert daemon.status()["state"] == "estopped"
    page.wait_for_selector("#estop-banner:not([hidden])")
    _screenshot(page, "estopped")

    daemon.wait_for(lambda s: s["task"] is None, TASK_END_TIMEOUT_S, "the e-stopped task to end")
    page.click("#reset")
    page.wait_for_function("document.querySelector('#state').textContent === 'idle'")
    assert page.inner_text("#error") == ""


def test_a_refused_call_shows_the_daemons_detail(page, daemon):
    daemon.make_idle()
    page.wait_for_function("document.querySelector('#state').textContent === 'idle'")
    page.evaluate("sessionStorage.setItem('aimg.token', 'not-the-token')")
    page.click("#reset")
    page.wait_for_function("document.querySelector('#error').textContent.includes('401')")
    assert page.is_visible("#token-box")
