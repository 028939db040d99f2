"""`mailgate serve` and `mailgate worker` as real processes."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.e2e.processes import KEY, URL, mailgate, wait_status, write_config
from tests.helpers import Fakes, message

pytestmark = pytest.mark.slow


async def test_serve_out_of_the_box(tmp_path: Path) -> None:
    """No config at all: SQLite in ./.mailgate, simulated providers, a key printed."""
    async with mailgate("serve", "--port", "0", cwd=tmp_path) as server:
        url = (await server.wait_for(URL))[1]
        key = (await server.wait_for(KEY))[1]
        await server.wait_for(re.compile("simulating SendGrid and Mailgun"))
        assert (tmp_path / ".mailgate" / "mailgate.db").exists()
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {key}"}
        ) as client:
            assert (await client.get("/readyz")).status_code == 200
            first = (await client.post("/v1/messages", json=message())).json()
            # The simulated SendGrid posts its signed delivery event back.
            delivered = await wait_status(client, first["id"], "delivered")
            assert delivered["provider"] == "sendgrid"
            assert [e["type"] for e in delivered["events"]][-1] == "delivered"
            assert delivered["recipients"][0]["status"] == "delivered"

            # A drill through the API: the next message fails over to Mailgun.
            drill = await client.post(
                "/v1/providers/sendgrid/simulate-failure", json={"mode": "error"}
            )
            assert drill.status_code == 200
            second = (await client.post("/v1/messages", json=message())).json()
            failed_over = await wait_status(client, second["id"], "sent", "delivered")
            assert failed_over["provider"] == "mailgun"
            assert [e["type"] for e in failed_over["events"]][:4] == [
                "accepted",
                "attempt",
                "failover",
                "sent",
            ]
            await wait_status(client, second["id"], "delivered")  # Mailgun's event, signed

            # A hard bounce suppresses the address: the next message to it is not sent.
            await client.post("/v1/providers/sendgrid/simulate-failure", json={"mode": "off"})
            bounce = message(to="bounce@example.org")
            third = (await client.post("/v1/messages", json=bounce)).json()
            bounced = await wait_status(client, third["id"], "bounced")
            assert bounced["recipients"][0]["detail"]["kind"] == "hard"
            listed = (await client.get("/v1/suppressions")).json()["data"]
            assert [(s["email"], s["reason"]) for s in listed] == [
                ("bounce@example.org", "hard_bounce")
            ]
            fourth = (await client.post("/v1/messages", json=bounce)).json()
            refused = await wait_status(client, fourth["id"], "failed")
            assert [e["type"] for e in refused["events"]][-2:] == ["suppressed", "failed"]
        assert await server.stop() == 0
        assert any("shutting down" in line for line in server.lines)

    # A restart finds the same database and prints the saved key again.
    async with mailgate("serve", "--port", "0", cwd=tmp_path) as again:
        await again.wait_for(URL)
        assert (await again.wait_for(KEY))[1] == key
        await again.wait_for(re.compile(r"from .*bootstrap-key"))
        assert await again.stop() == 0


async def test_separate_api_and_worker_processes_share_the_store(
    tmp_path: Path, fakes: Fakes
) -> None:
    config = write_config(
        tmp_path / "mailgate.toml",
        f"sqlite:///{tmp_path}/shared.db",
        fakes.providers(),
        poll_interval_seconds=0.1,
    )
    async with (
        mailgate(
            "serve", "--no-worker", "--port", "0", "--config", str(config), cwd=tmp_path
        ) as api,
        mailgate("worker", "--config", str(config), cwd=tmp_path) as worker,
    ):
        url = (await api.wait_for(URL))[1]
        key = (await api.wait_for(KEY))[1]
        await worker.wait_for(re.compile("worker .* started"))
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {key}"}
        ) as client:
            ids = [
                (await client.post("/v1/messages", json=message())).json()["id"] for _ in range(20)
            ]
            for message_id in ids:
                assert (await wait_status(client, message_id, "sent"))["provider"] == "primary"

            # Disabled through the API process; the worker process sees it within a second.
            assert (await client.post("/v1/providers/primary/disable")).status_code == 200
            await asyncio.sleep(1.2)
            later = (await client.post("/v1/messages", json=message())).json()
            assert (await wait_status(client, later["id"], "sent"))["provider"] == "backup"
        assert await worker.stop() == 0
        assert await api.stop() == 0
    assert sorted(fakes.sendgrid.counts) == sorted(ids)


async def test_the_readme_run_command(tmp_path: Path) -> None:
    """`scripts/run` installs (a no-op here) and starts the service; extra args reach serve."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "run"
    config = tmp_path / "mailgate.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/run.db"\n')
    proc = await asyncio.create_subprocess_exec(
        str(script), "--port", "0", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    url = key = None
    try:
        async with asyncio.timeout(120):
            while url is None or key is None:
                line = (await proc.stdout.readline()).decode()
                assert line, "scripts/run exited early"
                url = url or (m[1] if (m := URL.search(line)) else None)
                key = key or (m[1] if (m := KEY.search(line)) else None)
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {key}"}
        ) as client:
            response = await client.post("/v1/messages", json=message())
            assert response.status_code == 202
            done = await wait_status(client, response.json()["id"], "sent", "delivered")
            assert done["provider"] == "sendgrid"
    finally:
        proc.terminate()
        await proc.wait()
    assert proc.returncode == 0


@pytest.mark.timeout(180)  # three spawned processes; a loaded CI run took over 60 s once
async def test_serve_with_several_api_processes(tmp_path: Path) -> None:
    """`serve --workers 2`: two API processes share the port, a worker process delivers."""
    async with mailgate("serve", "--workers", "2", "--port", "0", cwd=tmp_path) as server:
        url = (await server.wait_for(URL))[1]
        key = (await server.wait_for(KEY))[1]
        await server.wait_for(re.compile("with 2 API processes and a worker"))
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {key}"}
        ) as client:
            ids = []
            for _ in range(20):
                # A fresh connection each time, so the kernel can pick either process.
                async with httpx.AsyncClient(
                    base_url=url, headers={"Authorization": f"Bearer {key}"}
                ) as once:
                    ids.append((await once.post("/v1/messages", json=message())).json()["id"])
                    assert (await once.get("/readyz")).status_code == 200
            for message_id in ids:
                done = await wait_status(client, message_id, "sent", "delivered")
                assert done["provider"] == "sendgrid"
            metrics = (await client.get("/metrics")).text
            # Counted in the API processes and in the worker process, summed.
            assert "mailgate_messages_accepted_total 20.0" in metrics
            assert 'mailgate_messages_sent_total{provider="sendgrid"} 20.0' in metrics
        db = tmp_path / ".mailgate" / "mailgate.db"
        with sqlite3.connect(db) as conn:
            kinds = [row[0] for row in conn.execute("SELECT kind FROM nodes")]
        assert kinds.count("api") == 2
        assert await server.stop() == 0
