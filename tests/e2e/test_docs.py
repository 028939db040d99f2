"""The examples in docs/ run as written."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from mailgate.config import MailgunSettings, SendGridSettings, load_settings
from tests.e2e.processes import KEY, URL, mailgate

DOCS = Path(__file__).resolve().parents[2] / "docs"

pytestmark = pytest.mark.slow


def test_the_example_config_loads() -> None:
    settings = load_settings(DOCS / "examples" / "mailgate.toml", environ={})
    primary, backup = settings.providers
    assert isinstance(primary, SendGridSettings) and isinstance(backup, MailgunSettings)
    assert backup.base_url == "https://api.eu.mailgun.net"
    assert settings.delivery.default_from == "Example <noreply@example.com>"


async def test_the_send_example_against_a_running_service(tmp_path: Path) -> None:
    async with mailgate("serve", "--port", "0", cwd=tmp_path) as server:
        url = (await server.wait_for(URL))[1]
        key = (await server.wait_for(KEY))[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(DOCS / "examples" / "send_message.py"),
            env={**os.environ, "MAILGATE_URL": url, "MAILGATE_KEY": key},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        text = out.decode()
        assert proc.returncode == 0, text
        assert "accepted" in text
        assert "sent via sendgrid" in text or "delivered via sendgrid" in text


async def test_the_readme_python_example(tmp_path: Path) -> None:
    readme = (DOCS.parent / "README.md").read_text()
    [example] = [
        block.split("\n", 1)[1]
        for block in readme.split("```python")[1:]
        if "from mailgate.client import Client" in block
    ]
    code = example.split("```", 1)[0]
    async with mailgate("serve", "--port", "0", cwd=tmp_path) as server:
        url = (await server.wait_for(URL))[1]
        key = (await server.wait_for(KEY))[1]
        script = f"key = {key!r}\n" + code.replace("http://127.0.0.1:8025", url)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    assert out.decode().strip() in {"sent", "delivered"}
