"""The dashboard in a real Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Playwright's sync API runs in a worker thread; the agent and the simulated fleet keep running
in the test's Trio loop, and the browser thread changes the fleet through trio.from_thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
from playwright.sync_api import Page, sync_playwright

from .support import (
    Publisher,
    agent_with_fleet,
    app_server,
    make_view,
    sandbox_id,
    serve_app_until_cancelled,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
WAIT_MS = 15_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]


@contextmanager
def browser_page(base_url: str) -> Iterator[tuple[Page, list[str]]]:
    """A page of a fresh headless Chromium, and the list of every URL it requests."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.set_default_timeout(WAIT_MS)
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.on("websocket", lambda ws: requested.append(ws.url))
            yield page, requested
        finally:
            browser.close()


def _cells(page: Page, column: str) -> dict[str, str]:
    result: dict[str, str] = page.eval_on_selector_all(
        "#sandboxes tbody tr",
        f"""rows => Object.fromEntries(rows.map(r =>
            [r.dataset.sandboxId, r.querySelector('td.{column}').textContent]))""",
    )
    return result


def _same_origin_only(requested: list[str], base_url: str) -> None:
    origin = urlsplit(base_url).netloc
    foreign = [url for url in requested if urlsplit(url).netloc != origin]
    assert not foreign, f"requests outside the agent: {foreign}"


async def test_dashboard_shows_the_fleet_live() -> None:
    async with agent_with_fleet(6, interval=0.3) as live:
        base = f"{live.url}/"
        pods = {sid: sandbox.pod.name for sid, sandbox in live.fleet.sandboxes.items()}
        leaving = sorted(pods)[0]

        def remove_sandbox() -> None:
            trio.from_thread.run_sync(live.fleet.remove, leaving)

        def browse() -> None:
            with browser_page(base) as (page, requested):
                page.goto(base)
                page.wait_for_selector('#connection[data-state="live"]')
                for sid in pods:
                    page.wait_for_selector(f'tr[data-sandbox-id="{sid}"]')
                shown = _cells(page, "pod")
                assert {sid: text[: len(pods[sid])] for sid, text in shown.items()} == pods
                page.evaluate("window.__notReloaded = true")

                # Figures arrive and then change, over the websocket, without a reload.
                page.wait_for_function(
                    "() => [...document.querySelectorAll('#sandboxes td.cpu')]"
                    ".every(td => /\\d/.test(td.textContent))"
                )
                memory_before = _cells(page, "memory")
                page.wait_for_function(
                    """before => [...document.querySelectorAll('#sandboxes tbody tr')]
                        .some(r => r.querySelector('td.memory').textContent
                                   !== before[r.dataset.sandboxId])""",
                    arg=memory_before,
                )
                # The sparklines grow as collections come in.
                page.wait_for_function(
                    """() => [...document.querySelectorAll('#sandboxes svg.sparkline.cpu polyline')]
                        .every(l => (l.getAttribute('points') || '').split(' ').length >= 3)"""
                )

                remove_sandbox()
                page.wait_for_selector(f'tr[data-sandbox-id="{leaving}"]', state="detached")
                assert len(_cells(page, "pod")) == len(pods) - 1
                assert page.evaluate("window.__notReloaded") is True
                page.wait_for_function(
                    "n => document.getElementById('count-total').textContent === String(n)",
                    arg=len(pods) - 1,
                )

                # Sorting and filtering happen in the page.
                page.click('th[data-sort="pod"] button')
                page.wait_for_function(
                    """() => {
                        const names = [...document.querySelectorAll('#sandboxes td.pod')]
                            .map(td => td.firstChild.textContent);
                        return names.every((n, i) => i === 0 || names[i - 1] <= n);
                    }"""
                )
                assert page.get_attribute('th[data-sort="pod"]', "aria-sort") == "ascending"
                keep = next(sid for sid in pods if sid != leaving)
                page.fill("#filter", pods[keep])
                page.wait_for_function(
                    "() => document.querySelectorAll('#sandboxes tbody tr').length === 1"
                )
                page.fill("#filter", "")
                page.wait_for_function(
                    f"() => document.querySelectorAll('#sandboxes tbody tr').length === "
                    f"{len(pods) - 1}"
                )

                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
                _same_origin_only(requested, base)

        await trio.to_thread.run_sync(browse)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 0


async def test_dashboard_shows_a_dropped_connection_and_recovers() -> None:
    publisher = Publisher([make_view(1, pod_name="before-drop")])
    first_server = trio.CancelScope()

    async def restart(port: int, done: trio.Event) -> None:
        async with app_server(publisher, port=port):
            await done.wait()

    async with trio.open_nursery() as nursery:
        first = await nursery.start(serve_app_until_cancelled, first_server, publisher)
        port = urlsplit(first.url).port
        assert port is not None
        base = f"{first.url}/"
        done = trio.Event()

        def in_trio(fn: Callable[..., Any], *args: Any) -> Any:
            return trio.from_thread.run_sync(fn, *args)

        def browse() -> None:
            with browser_page(base) as (page, _):
                page.goto(base)
                page.wait_for_selector('#connection[data-state="live"]')
                page.wait_for_selector(f'tr[data-sandbox-id="{sandbox_id(1)}"]')

                in_trio(first_server.cancel)
                page.wait_for_selector('#connection[data-state="reconnecting"]')
                page.wait_for_function(
                    "() => document.getElementById('connection-text').textContent"
                    ".includes('retrying in')"
                )
                # The last known rows stay on screen while the link is down.
                assert page.locator(f'tr[data-sandbox-id="{sandbox_id(1)}"]').count() == 1

                in_trio(publisher.put, make_view(2, pod_name="after-drop"))
                in_trio(nursery.start_soon, restart, port, done)
                page.wait_for_selector('#connection[data-state="live"]')
                page.wait_for_selector(f'tr[data-sandbox-id="{sandbox_id(2)}"]')
                in_trio(done.set)

        await trio.to_thread.run_sync(browse)
