"""The dashboard in a real headless Chromium (tests/browser.py): sign in with the admin key, see
the test's own traffic on the overview and in the request tail, watch a key the upstream
throttles cool down and come back, disable and enable a key from the page and see routing
follow, reload a changed configuration from the page. Every wait is on the page's text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import click, go, sign_in, start_browser, wait_text
from helpers import Gateway

from truckllm.api import App
from truckllm.config import load_config
from truckllm.testing.mock import MockUpstream, Scripted
from truckllm.testing.serve import ServerThread

ADMIN_KEY = "adm-TOPSECRET"
CLIENT = {"Authorization": "Bearer client-TOPSECRET"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def config_text(url: str, extra_key: str = "") -> str:
    return f"""
providers:
  - id: openai
    base_url: {url}
    models: [gpt-4o-mini]
    keys:
      - {{id: k1, secret: sk-up-TOPSECRET-1, pricing: {{input_token_cost: 2.5, output_token_cost: 10, unit: per_1m_tokens}}}}
      - {{id: k2, secret: sk-up-TOPSECRET-2, limits: {{rpm: 100}}}}
{extra_key}
server:
  admin_api_key: {ADMIN_KEY}
  api_keys: [{{id: team, key: client-TOPSECRET, budget: {{daily: 5, monthly: 50}}}}]
  reload_interval: 0
routing: {{strategy: round_robin}}
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = start_browser()
    yield driver
    driver.quit()


@pytest.fixture
def config_file(tmp_path: Path, upstream: MockUpstream) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(config_text(upstream.url))
    return path


@pytest.fixture
def gw(config_file: Path) -> Iterator[Gateway]:
    app = App(load_config(config_file, env={}), config_path=str(config_file))
    server = ServerThread(app).start()
    yield Gateway(app, server)
    server.stop()


def chat(gw: Gateway, request_id: str | None = None) -> int:
    headers = dict(CLIENT)
    if request_id:
        headers["X-Request-Id"] = request_id
    return gw.post("/v1/chat/completions", CHAT, headers=headers).status


def test_sign_in_then_traffic_shows_on_the_overview_and_in_the_tail(
    browser: Any, gw: Gateway
) -> None:
    from selenium.webdriver.common.by import By

    sign_in_wrong(browser, gw)
    sign_in(browser, gw.url, ADMIN_KEY)
    wait_text(browser, "#ov-requests", lambda t: t.startswith("0"))
    assert chat(gw, "ui-test-first") == 200
    assert chat(gw) == 200
    wait_text(browser, "#ov-requests", lambda t: t.startswith("2"))
    wait_text(browser, "#ov-latency", lambda t: "ms" in t)
    wait_text(browser, "#ov-spend", lambda t: t.startswith("$0.0"))

    go(browser, "requests")
    row = wait_text(browser, 'tr[data-request-id="ui-test-first"]', bool)
    assert "gpt-4o-mini" in row and "openai /" in row and "200" in row
    unknown = dict(CHAT, model="nope")
    assert gw.post("/v1/chat/completions", unknown, headers=CLIENT).status == 404
    wait_text(browser, "#page tbody tr.bad", lambda t: "404" in t)
    status_filter = browser.find_element(By.ID, "tail-status")
    status_filter.send_keys("error\n")
    wait_text(browser, "#page tbody", lambda t: "404" in t and "ui-test-first" not in t)

    go(browser, "budgets")
    wait_text(browser, 'tr[data-client="team"]', lambda t: "of $5.00" in t and "of $50.00" in t)
    assert "TOPSECRET" not in browser.page_source


def sign_in_wrong(browser: Any, gw: Gateway) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{gw.url}/ui/")
    browser.find_element(By.ID, "login-key").send_keys("not-the-key")
    browser.find_element(By.ID, "login-btn").click()
    wait_text(browser, "#login-error", lambda t: "not the admin key" in t)


def test_a_throttled_key_turns_cooling_on_the_keys_page_and_comes_back(
    browser: Any, gw: Gateway, upstream: MockUpstream
) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, gw.url, ADMIN_KEY, page="keys")
    wait_text(browser, 'tr[data-key="k2"] .status', lambda t: t == "active")
    # The upstream answers the next request 429 with Retry-After: the key that got it cools
    # down for 3 s while the gateway serves the request from the other one.
    upstream.script.append(
        Scripted(
            status=429,
            headers={"retry-after": "3"},
            body={
                "error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}
            },
        )
    )
    assert chat(gw) == 200
    status = wait_text(browser, "tr.st-cooling .status", lambda t: t.startswith("cooling"))
    assert status.endswith(" s")  # the time left
    cooling = browser.find_element(By.CSS_SELECTOR, "tr.st-cooling").get_attribute("data-key")
    assert cooling in ("k1", "k2")
    row = f'tr[data-key="{cooling}"]'
    wait_text(browser, row, lambda t: "rpm" in t or cooling == "k1")  # headroom under its limit
    wait_text(browser, row + " .status", lambda t: t == "active", timeout=20)
    assert wait_text(browser, row + " td:nth-child(7)", bool) == "1"  # its one 429, counted


def test_disable_and_enable_a_key_from_the_page_and_routing_follows(
    browser: Any, gw: Gateway, upstream: MockUpstream
) -> None:
    sign_in(browser, gw.url, ADMIN_KEY, page="keys")
    wait_text(browser, 'tr[data-key="k1"] .status', lambda t: t == "active")
    click(browser, 'tr[data-key="k1"] button[data-action="disable"]')
    wait_text(browser, 'tr[data-key="k1"] .status', lambda t: t.startswith("disabled"))
    before = len(upstream.arrivals)
    for _ in range(3):
        assert chat(gw) == 200
    used = {key for key, _ in upstream.arrivals[before:]}
    assert used == {"sk-up-TOPSECRET-2"} and "sk-up-TOPSECRET-1" not in used

    click(browser, 'tr[data-key="k1"] button[data-action="enable"]')
    wait_text(browser, 'tr[data-key="k1"] .status', lambda t: t == "active")
    start = len(upstream.arrivals)
    for _ in range(2):
        assert chat(gw) == 200
    assert "sk-up-TOPSECRET-1" in {key for key, _ in upstream.arrivals[start:]}


def test_reload_a_changed_configuration_from_the_page(
    browser: Any, gw: Gateway, config_file: Path, upstream: MockUpstream
) -> None:
    sign_in(browser, gw.url, ADMIN_KEY, page="config")
    wait_text(browser, "#config-json", lambda t: '"k2"' in t and "********" in t)
    assert "TOPSECRET" not in browser.page_source
    config_file.write_text(config_text(upstream.url, "      - {id: k3, secret: sk-up-TOPSECRET-3}"))
    click(browser, "#reload-btn")
    wait_text(browser, "#reload-result", lambda t: t.startswith("Reloaded"))
    wait_text(browser, "#config-json", lambda t: '"k3"' in t)
    go(browser, "keys")
    wait_text(browser, 'tr[data-key="k3"] .status', lambda t: t == "active")

    config_file.write_text("providers: [oops")
    go(browser, "config")
    click(browser, "#reload-btn")
    result = wait_text(browser, "#reload-result", lambda t: t.startswith("Reload failed"))
    assert "config.yaml" in result
    assert "TOPSECRET" not in browser.page_source
