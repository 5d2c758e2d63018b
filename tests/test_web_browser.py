"""The page end to end in headless Chromium (Debian's ``chromium``, driven by Playwright).

Starts uvicorn on a free loopback port in a thread, loads the page, picks a model, changes the
batch size, and checks the peak the page shows against the API's. Skips, saying why, where
Chromium, Playwright or the web extra is missing. The screenshot goes to a temporary folder;
``MEMFIT_UPDATE_SCREENSHOT=1`` writes it to ``docs/img/web.png`` instead.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the web extra (uvicorn) is not installed")
playwright_api = pytest.importorskip("playwright.sync_api",
                                     reason="playwright is not installed (pip install playwright)")

CHROMIUM = os.environ.get("MEMFIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

# Debian's Chromium as root, on a machine without a network or a GPU.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).parents[1] / "docs" / "img" / "web.png"
TIMEOUT_MS = 15_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    from memfit.web.app import create_app

    port = _free_port()
    config = uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as exc:  # noqa: BLE001 - a broken browser install is a skip
            pytest.skip(f"Chromium at {CHROMIUM} did not start: {exc}")
        yield b
        b.close()


def api(base_url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(base_url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def wait_until(page: Any, predicate: str, timeout_ms: int = TIMEOUT_MS) -> None:
    """Poll a JS expression. (Playwright's ``wait_for_function`` evaluates strings inside the
    page, which the page's Content-Security-Policy rightly forbids; ``evaluate`` does not.)"""
    deadline = time.monotonic() + timeout_ms / 1000
    while not page.evaluate(f"() => Boolean({predicate})"):
        if time.monotonic() > deadline:
            state = page.evaluate("() => [document.body.dataset.state, "
                                  "document.querySelector('#error').textContent]")
            raise AssertionError(f"timed out waiting for {predicate}; page state {state}")
        time.sleep(0.05)


def wait_ready(page: Any) -> None:
    wait_until(page, "document.body.dataset.state === 'ready'")


def test_pick_model_change_batch_peak_matches_api(browser: Any, base_url: str,
                                                  tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(m.text)
            if m.type == "error" and "status of 422" not in m.text else None)  # 422: tp=5 below
    page.goto(base_url + "/")
    wait_ready(page)

    page.select_option("#model", "llama-3.1-8b")
    page.fill("#opt-infer-batch", "16")
    page.fill("#opt-infer-prompt", "4096")
    expected = api(base_url, "/api/infer", {"model": "llama-3.1-8b", "options": {
        "batch": 16, "prompt": 4096, "gpu": "h100-sxm"}})
    wait_until(page,
        f"document.querySelector('#peak').dataset.bytes === '{expected['peak_bytes']}' && "
        "document.body.dataset.state === 'ready'")
    assert page.text_content("#peak") == f"{expected['peak_bytes'] / 2**30:.2f} GiB"
    assert page.get_attribute("#total", "data-bytes") == str(expected["total_bytes"])

    # the breakdown table, a stacked bar segment per component, a verdict per common GPU
    rows = page.locator("#breakdown tbody tr").count()
    assert rows >= len(expected["components"]) + 2
    assert page.locator("#bar svg rect.seg").count() >= 3
    assert page.locator("#verdicts .chip").count() == 6
    assert "largest batch" in page.text_content("#fit")

    # the state is in the URL: the same link gives the same scenario
    assert "batch=16" in page.url and "model=llama-3.1-8b" in page.url
    again = browser.new_page()
    again.goto(page.url)
    wait_ready(again)
    assert again.get_attribute("#peak", "data-bytes") == str(expected["peak_bytes"])
    assert again.input_value("#opt-infer-batch") == "16"
    again.close()

    # the explanation of each number
    page.check("#explain")
    wait_ready(page)
    assert page.locator("#terms tbody tr").count() == len(expected["terms"])
    page.uncheck("#explain")
    wait_ready(page)

    # a bad value is shown next to its field with what is allowed
    page.fill("#opt-infer-tp", "5")
    wait_until(page, "document.body.dataset.state === 'error'")
    assert "allowed" in page.text_content("#error")
    assert "invalid" in (page.get_attribute("#opt-infer-tp", "class") or "")
    page.fill("#opt-infer-tp", "")
    wait_ready(page)

    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    shot = SCREENSHOT if os.environ.get("MEMFIT_UPDATE_SCREENSHOT") == "1" else tmp_path / "web.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
    assert not problems, problems
    page.close()


def test_training_and_pasted_config(browser: Any, base_url: str) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(base_url + "/?model=qwen2.5-0.5b&mode=train&gpu=l4&batch=2")
    wait_ready(page)
    expected = api(base_url, "/api/train", {"model": "qwen2.5-0.5b",
                                            "options": {"batch": 2, "gpu": "l4"}})
    assert page.get_attribute("#peak", "data-bytes") == str(expected["peak_bytes"])
    assert "micro-batch" in page.text_content("#fit")

    # paste a config.json: the catalog model's config is the starting point
    page.check('input[name="source"][value="config"]')
    wait_until(page, "document.querySelector('#config').value.includes('qwen2')")
    wait_ready(page)
    assert page.get_attribute("#peak", "data-bytes") == str(expected["peak_bytes"])
    config = json.loads(page.input_value("#config"))
    config["num_hidden_layers"] = 12
    page.fill("#config", json.dumps(config))
    changed = api(base_url, "/api/train", {"model": config, "options": {"batch": 2, "gpu": "l4"}})
    wait_until(page,
        f"document.querySelector('#peak').dataset.bytes === '{changed['peak_bytes']}'")
    assert "config=" in page.url
    page.close()
