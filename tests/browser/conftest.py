"""The console in a real browser: Debian's Chromium driven by Playwright, against a real
`mailgate serve` (SQLite, the simulated providers, which post their events back).

Playwright's own browser download cannot be reached here, so the browser is
the system's (`apt-get install chromium`; `.ci/run` installs it when
missing) launched through `executable_path`. Without it these tests are
skipped, except under `CI=true`, where that is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

CHROMIUM = os.environ.get("MAILGATE_TEST_CHROMIUM") or shutil.which("chromium") or ""
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip


@dataclass
class Gateway:
    """A running `mailgate serve`, its admin key, and an API client holding it."""

    url: str
    admin_key: str
    database: Path
    lines: list[str] = field(default_factory=list)

    def stored_body(self, message_id: str) -> dict[str, Any]:
        """The message's content as the store keeps it (what the worker hands a provider)."""
        with contextlib.closing(sqlite3.connect(self.database)) as db:
            [(body,)] = db.execute(
                "SELECT body FROM message_bodies WHERE message_id = ?", (message_id,)
            ).fetchall()
        return dict(json.loads(body))

    def api(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key or self.admin_key}"}
        )

    def call(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> Any:
        with self.api(key) as client:
            response = client.request(method, path, **kwargs)
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    def key(self, scopes: list[str], tenant_id: str = "default", name: str = "console") -> str:
        body = {"name": name, "scopes": scopes, "tenant_id": tenant_id}
        return str(self.call("POST", "/v1/keys", json=body)["key"])

    def send(self, key: str | None = None, **fields: Any) -> str:
        body = {"from": "Shop <shop@example.com>", "to": ["reader@example.org"],
                "subject": "Hello", "text": "Hi", **fields}  # fmt: skip
        return str(self.call("POST", "/v1/messages", key, json=body)["id"])

    def status(self, message_id: str, key: str | None = None) -> str:
        return str(self.call("GET", f"/v1/messages/{message_id}", key)["status"])

    def wait_status(self, message_id: str, *statuses: str, key: str | None = None) -> None:
        deadline = time.monotonic() + 20
        while self.status(message_id, key) not in statuses:
            assert time.monotonic() < deadline, f"{message_id} never became {statuses}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("console")
    config = Path(directory) / "mailgate.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{directory}/mailgate.db"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailgate", "serve", "--port", "0", "--config", str(config)],
        cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        url = key = None
        deadline = time.monotonic() + 60
        while (url is None or key is None) and time.monotonic() < deadline:
            text = "\n".join(lines)
            url = (m := re.search(r"listening on (http://\S+)", text)) and m[1]
            key = (m := re.search(r"API key: (mg_\S+)", text)) and m[1]
            assert proc.poll() is None, text
            time.sleep(0.05)
        assert url and key, "\n".join(lines)
        yield Gateway(url, key, directory / "mailgate.db", lines)
    finally:
        proc.terminate()
        proc.wait(30)
        reader.join(5)
        assert proc.stderr is not None
        proc.stderr.close()


# Module-scoped, not session-scoped: Playwright's sync API keeps an event loop
# marked running in this thread while it is open, which would stop every
# asyncio test that runs after it.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM or not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is missing: apt-get install chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile per test: its own cookies."""
    made = browser.new_context()
    made.set_default_timeout(15_000)
    yield made
    made.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def log_in(page: Page, gateway: Gateway, key: str | None = None) -> None:
    page.goto(f"{gateway.url}/ui")
    page.get_by_label("API key").fill(key or gateway.admin_key)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/ui$"))
