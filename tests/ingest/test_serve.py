"""SMTP submission inside a real `mailgate serve`, delivered through (fake) providers."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import smtplib
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pytest

from tests.e2e.processes import KEY, URL, mailgate, wait_status, write_config
from tests.helpers import Fakes
from tests.ingest.conftest import Certificate
from tests.ingest.test_mime import PDF, rich_message

pytestmark = pytest.mark.slow

SMTP_LINE = re.compile(r"SMTP submission is listening on smtp://([0-9.]+):(\d+) \((.*)\)")
DOCS = Path(__file__).resolve().parents[2] / "docs"
QUEUED = re.compile(r"^2\.0\.0 queued as (msg_[0-9A-Z]{26})$")


async def run_example(host: str, port: int, key: str, certificate: Certificate) -> str:
    """docs/examples/send_smtp.py, as written, against the server; the id it was queued as."""
    env = {
        **os.environ,
        "MAILGATE_SMTP": f"{host}:{port}",
        "MAILGATE_KEY": key,
        "MAILGATE_SMTP_CA": str(certificate.cert),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(DOCS / "examples" / "send_smtp.py"), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    match = re.search(r"^250 2\.0\.0 queued as (msg_\w+)$", out.decode(), re.MULTILINE)
    assert match, out.decode()
    return match[1]


def config_with_smtp(tmp_path: Path, fakes: Fakes, smtp: str) -> Path:
    config = write_config(
        tmp_path / "mailgate.toml",
        f"sqlite:///{tmp_path}/mailgate.db",
        fakes.providers(),
        poll_interval_seconds=0.1,
    )
    config.write_text(config.read_text() + "[smtp_server]\nenabled = true\nport = 0\n" + smtp)
    return config


async def test_a_message_submitted_over_smtp_is_delivered_with_its_parts(
    tmp_path: Path, fakes: Fakes, certificate: Certificate
) -> None:
    tls = f'tls_cert_file = "{certificate.cert}"\ntls_key_file = "{certificate.key}"\n'
    config = config_with_smtp(tmp_path, fakes, tls)
    async with mailgate("serve", "--port", "0", "--config", str(config), cwd=tmp_path) as server:
        url = (await server.wait_for(URL))[1]
        key = (await server.wait_for(KEY))[1]
        smtp_line = await server.wait_for(SMTP_LINE)
        host, port = smtp_line[1], int(smtp_line[2])
        assert smtp_line[3] == "STARTTLS offered, AUTH only after it"
        smtp = aiosmtplib.SMTP(hostname=host, port=port, tls_context=certificate.client_context())
        async with smtp:
            await smtp.ehlo()
            await smtp.auth_login("app", key)
            _, reply = await smtp.send_message(
                rich_message(),
                recipients=["bob@example.org", "carol@example.org", "dan@example.net", "e@x.org"],
            )
        match = QUEUED.match(reply)
        assert match, reply
        message_id = match[1]
        example = await run_example(host, port, key, certificate)
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {key}"}
        ) as client:
            done = await wait_status(client, message_id, "sent", "delivered")
            by_example = await wait_status(client, example, "sent", "delivered")
        assert by_example["tags"] == ["reports"]
        assert done["provider"] == "primary"
        assert [a["email"] for a in done["bcc"]] == ["e@x.org"]
        assert done["tags"] == ["reports", "q3, 2024"]
        assert await server.stop() == 0
    sent = [r for r in fakes.sendgrid.received if r.mailgate_id == message_id]
    assert len(sent) == 1
    body: dict[str, Any] = sent[0].fields
    attachments = {a["filename"]: a for a in body["attachments"]}
    assert sorted(attachments) == ["logo.png", "report.pdf"]
    assert base64.b64decode(attachments["report.pdf"]["content"]) == PDF
    assert attachments["report.pdf"]["type"] == "application/pdf"
    assert body["headers"]["X-Campaign"] == "q3"
    assert body["headers"]["List-Unsubscribe"] == "<mailto:unsubscribe@example.com>"
    assert body["personalizations"][0]["bcc"] == [{"email": "e@x.org"}]


def send_with_smtplib(host: str, port: int, key: str, msg: EmailMessage) -> None:
    """The standard library's client, which blocks: run it in a thread."""
    with smtplib.SMTP(host, port, timeout=30) as smtp:
        smtp.login("app", key)
        assert smtp.send_message(msg) == {}  # no recipient refused


async def test_non_ascii_headers_and_an_attachment_reach_the_provider_intact(
    tmp_path: Path, fakes: Fakes
) -> None:
    # The email package writes the headers as RFC 2047 encoded words and the file
    # name as an RFC 2231 parameter (filename*=utf-8''...).
    msg = EmailMessage()
    msg["From"] = "Zoë Ünïcode <zoe@example.com>"
    msg["To"] = "Jürgen Groß <juergen@example.org>"
    msg["Subject"] = "Grüße aus Berlin 🌍, Ångström café"
    msg.set_content("Hallo Jürgen,\nder Bericht hängt an. 🌍\n")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="Bericht März.pdf")
    assert b"=?utf-8?" in msg.as_bytes() and b"filename*=utf-8''" in msg.as_bytes()
    config = config_with_smtp(tmp_path, fakes, "")
    async with mailgate("serve", "--port", "0", "--config", str(config), cwd=tmp_path) as server:
        url = (await server.wait_for(URL))[1]
        key = (await server.wait_for(KEY))[1]
        smtp_line = await server.wait_for(SMTP_LINE)
        await asyncio.to_thread(send_with_smtplib, smtp_line[1], int(smtp_line[2]), key, msg)
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {key}"}
        ) as client:
            [listed] = (await client.get("/v1/messages")).json()["data"]
            done = await wait_status(client, listed["id"], "sent", "delivered")
        assert done["subject"] == "Grüße aus Berlin 🌍, Ångström café"
        assert await server.stop() == 0
    [sent] = [r for r in fakes.sendgrid.received if r.mailgate_id == listed["id"]]
    body: dict[str, Any] = sent.fields
    assert body["subject"] == "Grüße aus Berlin 🌍, Ångström café"
    assert body["from"] == {"email": "zoe@example.com", "name": "Zoë Ünïcode"}
    assert body["personalizations"][0]["to"] == [
        {"email": "juergen@example.org", "name": "Jürgen Groß"}
    ]
    assert body["content"] == [
        {"type": "text/plain", "value": "Hallo Jürgen,\nder Bericht hängt an. 🌍"}
    ]
    [attachment] = body["attachments"]
    assert (attachment["filename"], attachment["type"]) == ("Bericht März.pdf", "application/pdf")
    assert base64.b64decode(attachment["content"]) == PDF


async def test_several_api_processes_share_one_smtp_socket(tmp_path: Path, fakes: Fakes) -> None:
    config = config_with_smtp(tmp_path, fakes, "")
    args = ("serve", "--workers", "2", "--port", "0", "--config", str(config))
    async with mailgate(*args, cwd=tmp_path) as server:
        url = (await server.wait_for(URL))[1]
        key = (await server.wait_for(KEY))[1]
        smtp_line = await server.wait_for(SMTP_LINE)
        host, port = smtp_line[1], int(smtp_line[2])
        assert smtp_line[3].startswith("no TLS")
        ids = []
        for n in range(6):
            # A fresh connection each time, so the kernel can hand it to either process.
            smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False)
            async with smtp:
                await smtp.ehlo()
                await smtp.auth_plain("app", key)
                msg = rich_message()
                msg.replace_header("Subject", f"message {n}")
                _, reply = await smtp.send_message(
                    msg, recipients=["bob@example.org", "carol@example.org", "dan@example.net"]
                )
            match = QUEUED.match(reply)
            assert match, reply
            ids.append(match[1])
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {key}"}
        ) as client:
            for message_id in ids:
                await wait_status(client, message_id, "sent", "delivered")
        assert await server.stop() == 0
    assert sorted(fakes.sendgrid.counts) == sorted(ids)
