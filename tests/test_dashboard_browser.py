"""The dashboard once in a real browser: Debian's Chromium, driven by Playwright, against the real
server (granian) and a real rq worker, as an operator would watch it during a load test."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.livestack import LiveStack

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
WAIT_MS = 30_000


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        message = (
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) to run this test"
        )
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"under CI the browser test must run; {message}")
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _card(page: Page, metric: str) -> str:
    return f'[data-metric="{metric}"] .value'


def _chart_points(page: Page, chart: str) -> int:
    return int(page.evaluate(f"() => window.dashboardCharts.{chart}.data.labels.length"))


def _charted_seconds(page: Page) -> dict[str, tuple[float | None, float | None]]:
    """Each second the charts show (label "HH:MM:SS", UTC) -> (queue depth, messages out)."""
    rows = page.evaluate(
        """() => { const c = window.dashboardCharts; return c.queue.data.labels.map(
            (label, i) => [label, c.queue.data.datasets[0].data[i], c.throughput.data.datasets[1].data[i]]); }"""
    )
    return {label: (queue, out) for label, queue, out in rows}


def test_a_simulated_burst_shows_live_without_reload(
    collected_static: None, live_stack: LiveStack, browser: Browser, output_dir: Path
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{live_stack.url}/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    expect(page.locator(_card(page, "total_messages"))).to_have_text("0")
    # A reload would drop this marker: everything below must arrive over the socket.
    page.evaluate("() => { window.sameDocument = true; }")
    points_before = _chart_points(page, "throughput")

    page.fill("#burst-count", "500")
    page.get_by_role("button", name="Simulate burst").click()

    expect(page.locator("#notice")).to_have_text("Queued 500 simulated messages.")
    expect(page.locator(_card(page, "total_messages"))).to_have_text("500", timeout=WAIT_MS)
    expect(page.locator(_card(page, "queue_length"))).to_have_text("0", timeout=WAIT_MS)
    expect(page.locator("#batches-table tbody tr").first).not_to_contain_text("No batch")
    expect(page.locator("#messages-table")).to_contain_text("simulated #")
    # The throughput chart gained points, and the seconds of the burst show messages going out.
    page.wait_for_function(
        "() => window.dashboardCharts.throughput.data.datasets[1].data.some((v) => v > 0)", timeout=WAIT_MS
    )
    assert _chart_points(page, "throughput") > points_before
    persisted = page.evaluate(
        "() => window.dashboardCharts.throughput.data.datasets[1].data.reduce((a, b) => a + b, 0)"
    )
    assert 0 < persisted <= 500
    expect(page.locator(_card(page, "p99_latency_ms"))).not_to_have_text("–", timeout=WAIT_MS)
    assert page.evaluate("() => window.sameDocument") is True
    page.screenshot(path=str(output_dir / "dashboard.png"), full_page=True)

    # The server goes away: the indicator turns red; it comes back: the page reconnects by itself.
    assert live_stack.web is not None
    live_stack.web.terminate()
    live_stack.web.wait(timeout=20)
    down_from = int(time.time()) + 1
    expect(page.locator("#connection")).to_have_attribute("data-state", "down", timeout=WAIT_MS)
    page.screenshot(path=str(output_dir / "dashboard-disconnected.png"))
    time.sleep(2)  # so that whole seconds pass with no server to watch the queue
    down_until = int(time.time())
    live_stack.web_start()
    expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    expect(page.locator(_card(page, "total_messages"))).to_have_text("500")
    assert page.evaluate("() => window.sameDocument") is True
    # Gaps are gaps: while no server ran, the workers' counts were still recorded (nothing went
    # out: 0), but nobody saw the queue: those seconds are empty, not the depth read on return.
    down = [datetime.fromtimestamp(s, tz=UTC).strftime("%H:%M:%S") for s in range(down_from, down_until)]
    assert down
    # The new server's snapshot replaces the charts' seconds with its own, the gap included.
    page.wait_for_function(
        "(label) => window.dashboardCharts.queue.data.labels.includes(label)", arg=down[-1], timeout=WAIT_MS
    )
    charted = _charted_seconds(page)
    assert [charted[label] for label in down] == [(None, 0)] * len(down)
    assert errors == []
