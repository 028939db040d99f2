"""`serve` on more than one core: delivery in a process of its own, woken at once, and
nothing left running after `kill -9`."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from mailgate.config import Settings, load_settings
from mailgate.supervisor import cores, supervised
from tests.e2e.processes import KEY, URL, mailgate, wait_status
from tests.helpers import eventually

pytestmark = pytest.mark.slow

MESSAGE = {"from": "a@example.com", "to": ["b@example.org"], "subject": "s", "text": "t"}
LISTENING = re.compile(r"mailgate is listening on \S+ (.*)")


def children(pid: int) -> list[int]:
    """The processes `pid` started (Linux)."""
    listed = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in listed]


def gone(pid: int) -> bool:
    """Not running any more: no such process, or a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def settings(**server: object) -> Settings:
    return load_settings(None).model_copy(
        update={"server": load_settings(None).server.model_copy(update=server)}
    )


def test_when_serve_supervises() -> None:
    many = cores() > 1
    assert supervised(settings(), worker=True) is many
    assert supervised(settings(one_process=True), worker=True) is False
    assert supervised(settings(), worker=False) is False  # --no-worker: one API process
    assert supervised(settings(workers=2), worker=False) is True
    assert supervised(settings(workers=2, one_process=True), worker=True) is True


@pytest.mark.skipif(cores() < 2, reason="one core: serve keeps everything in one process")
async def test_serve_delivers_from_a_process_of_its_own_and_dies_whole(tmp_path: Path) -> None:
    config = tmp_path / "mailgate.toml"
    # Workers poll every 30 s here: only the API process's wake-up explains a quick send.
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path}/m.db"\n[delivery]\npoll_interval_seconds = 30\n'
    )
    async with mailgate("serve", "--port", "0", "--config", str(config), cwd=tmp_path) as server:
        url = (await server.wait_for(URL))[1]
        key = (await server.wait_for(KEY))[1]
        assert "with 1 API process and a worker process" in (await server.wait_for(LISTENING))[1]
        started = children(server.proc.pid)
        # The API and the worker (and multiprocessing's resource tracker); the simulated
        # providers run in serve itself.
        assert len(started) >= 2
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers) as client:
            for _ in range(3):
                sent = await client.post("/v1/messages", json=MESSAGE)
                assert sent.status_code == 202
                await wait_status(client, sent.json()["id"], "sent", "delivered")
            # An operator's switch reaches the worker process too.
            assert (await client.post("/v1/providers/sendgrid/disable")).status_code == 200
            sent = await client.post("/v1/messages", json=MESSAGE)
            done = await wait_status(client, sent.json()["id"], "sent", "delivered")
            assert done["provider"] == "mailgun"
        server.kill()
        assert await server.proc.wait() == -9
    await eventually(lambda: all(gone(pid) for pid in started), timeout=10)


async def test_one_process_when_asked(tmp_path: Path) -> None:
    config = tmp_path / "mailgate.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/m.db"\n')
    args = ("serve", "--port", "0", "--one-process", "--config", str(config))
    async with mailgate(*args, cwd=tmp_path) as server:
        url = (await server.wait_for(URL))[1]
        key = (await server.wait_for(KEY))[1]
        assert "worker process" not in (await server.wait_for(LISTENING))[1]
        assert children(server.proc.pid) == []
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers) as client:
            sent = await client.post("/v1/messages", json=MESSAGE)
            await wait_status(client, sent.json()["id"], "sent", "delivered")
        assert await server.stop() == 0
