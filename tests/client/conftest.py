"""A real `mailgate serve` (SQLite, simulated providers) for the client to talk to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.processes import KEY, URL, mailgate


@dataclass
class Running:
    url: str
    key: str


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Running]:
    config = tmp_path / "mailgate.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/mailgate.db"\n')
    async with mailgate("serve", "--port", "0", "--config", str(config), cwd=tmp_path) as proc:
        url = (await proc.wait_for(URL))[1]
        key = (await proc.wait_for(KEY))[1]
        yield Running(url, key)
        await proc.stop()
