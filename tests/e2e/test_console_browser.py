"""The console in a real browser: Debian's Chromium (bin/install-browser) driven by Playwright, on a
real server. Log in, install and configure a plugin through the forms, send events, and see the
plugin's log lines, metrics and the team's events. Screenshots go to test-artifacts/console/ (not
committed) for a person to look at."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Browser, Page, expect, sync_playwright

from .plugin_stack import Stack
from .server import send_event, wait_until

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
SCREENSHOTS = Path(__file__).parents[2] / "test-artifacts" / "console"
TOKEN = "browser-admin-token"
PLUGIN_JSON = {
    "name": "greeter",
    "description": "Greets every event.",
    "main": "index.py",
    "config": [
        {"key": "greeting", "name": "Greeting", "type": "string", "required": True},
        {"key": "style", "name": "Style", "type": "choice", "choices": ["plain", "loud"], "default": "plain"},
        {"key": "api_key", "name": "API key", "type": "string", "secret": True},
    ],
}
PLUGIN = """
    def process_event(event, meta):
        text = meta.config["greeting"]
        if meta.config.get("style") == "loud":
            text = text.upper()
        meta.logger.info(f"greeted {event['distinct_id']} with {text}")
        if event["event"] == "refund":
            raise ValueError("cannot greet a refund")
        event["properties"]["greeting"] = text
        return event
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "Chromium is missing: run bin/install-browser (bin/test does)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def shot(page: Page, name: str, *, full_page: bool = True) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=full_page)


def test_operator_installs_configures_and_watches_a_plugin(
    stack: Stack, page: Page, redis_client: redis.Redis
) -> None:
    """(`redis_client` empties Redis first: no dead letters of earlier tests.)"""
    folder = stack.tmp_path / "greeter"
    folder.mkdir()
    (folder / "plugin.json").write_text(json.dumps(PLUGIN_JSON))
    (folder / "index.py").write_text(textwrap.dedent(PLUGIN))
    with stack.server(ADMIN_TOKEN=TOKEN) as server:
        server.wait_for_web()
        port = server.env["WEB_PORT"]
        server.wait_for_log(f"the operator's console is at http://localhost:{port}/console ")
        requests: list[str] = []
        blocked: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.on(
            "requestfailed",
            lambda request: blocked.append(request.url) if "csp" in (request.failure or "").lower() else None,
        )
        page.goto(f"{server.web_url}/console/plugins")
        expect(page).to_have_url(f"{server.web_url}/console/login?next=/console/plugins")
        page.fill("input[name=token]", "not the token")
        page.click("button:has-text('Log in')")
        expect(page.locator(".notice.error")).to_contain_text("That is not the admin token")
        page.fill("input[name=token]", TOKEN)
        shot(page, "01-login")
        page.click("button:has-text('Log in')")
        expect(page).to_have_url(f"{server.web_url}/console/plugins")

        # install from the folder on the server, enable it for the team
        page.fill("#install-path input[name=path]", "greeter")
        page.click("#install-path button")
        expect(page.locator(".notice")).to_contain_text("installed greeter")
        shot(page, "02-plugins")
        page.click("button:has-text('Enable for team')")
        expect(page.locator(".notice")).to_contain_text("enabled for team 2")
        expect(page.locator("h1")).to_contain_text("greeter")

        # the settings form from plugin.json: a required field is refused empty
        page.click("#settings button")
        expect(page.locator(".notice.error")).to_contain_text("Greeting (greeting) is required")
        page.fill("#settings input[name=greeting]", "Hello")
        page.select_option("#settings select[name=style]", "loud")
        page.fill("#settings input[name=api_key]", "sk-browser-secret")
        page.click("#settings button")
        expect(page.locator(".notice")).to_contain_text("settings saved")
        expect(page.locator("#settings")).to_contain_text("secret: set")
        assert "sk-browser-secret" not in page.content()
        shot(page, "03-plugin-config-saved")

        # events through the queue, as PostHog sends them; the page follows the log by itself
        for distinct_id in ("user-1", "user-2", "user-3"):
            stack.send("$pageview", distinct_id=distinct_id)
        stack.send("refund", distinct_id="user-2")
        stack.wait_for_events(4)
        log = page.locator("#log-lines")
        expect(log).to_contain_text("greeted user-1 with HELLO")
        expect(log).to_contain_text("greeted user-3 with HELLO")
        expect(page.locator("#calls-total")).to_have_text("4")
        expect(page.locator("#errors-total")).to_have_text("1")
        page.select_option("#log-filter select[name=level]", "ERROR")
        expect(log).to_contain_text("cannot greet a refund")
        expect(log).not_to_contain_text("greeted user-1")
        page.select_option("#log-filter select[name=level]", "")
        page.fill("#log-filter input[name=q]", "user-2")
        expect(log).not_to_contain_text("greeted user-1")
        expect(log).to_contain_text("greeted user-2 with HELLO")
        page.reload()
        expect(page.locator("#last-error")).to_contain_text("cannot greet a refund")
        expect(page.locator("#last-error pre.stack")).to_contain_text("cannot greet a refund")
        page.wait_for_timeout(2500)  # a second chart refresh, for the screenshot
        shot(page, "04-plugin-config-metrics-log")

        # the team's events and persons, searched by distinct id
        page.click("nav a:has-text('Teams')")
        expect(page.locator("table")).to_contain_text(stack.team.api_token)
        shot(page, "05-teams")
        page.click("a:has-text('events and persons')")
        expect(page.locator("#team-data")).to_contain_text("user-3")
        page.fill("input[name=distinct_id]", "user-2")
        expect(page.locator("#team-data")).not_to_contain_text("user-3")
        expect(page.locator("#team-data")).to_contain_text("refund")
        shot(page, "06-team-events")

        # an event for a team that does not exist ends as a dead letter, shown decoded, and replayable
        send_event(stack.app, team_id=999, distinct_id="ghost", event="lost", properties={"plan": "pro"})
        page.click("nav a:has-text('Status')")
        expect(page.locator("#events-stored")).to_have_text("4")

        def dead_letter_shown() -> bool:
            page.reload()
            return "lost from ghost (team 999)" in page.inner_text("#dead-letters")

        wait_until(dead_letter_shown)
        expect(page.locator("#dead-letters")).to_contain_text("No team found with ID 999")
        page.click("#dead-letters button:has-text('Replay')")
        expect(page.locator(".notice")).to_contain_text("1 dead letters put back on the queue")
        expect(page.locator(".checks")).to_contain_text("workers")
        page.wait_for_timeout(2500)
        shot(page, "07-status")

        # the API docs render from the server's own assets
        page.goto(f"{server.web_url}/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("plugin-server")
        shot(page, "08-docs")
        page.goto(f"{server.web_url}/redoc")
        expect(page.locator("h1")).to_contain_text("plugin-server")
        shot(page, "09-redoc", full_page=False)
        # nothing asked of another host (blob: and data: urls are made in the page), but ReDoc's logo,
        # which the page's Content-Security-Policy stops in the browser
        outside = [url for url in requests if url.startswith("http") and not url.startswith(server.web_url)]
        assert outside == blocked == ["https://cdn.redoc.ly/redoc/logo-mini.svg"]
