"""A real `mailgate serve` delivering through fake providers, for the drop-in API tests.

The tests drive it with the providers' own client libraries (blocking:
run them with `asyncio.to_thread`, since the fakes are served by the
test's event loop) and find what mailgate delivered in the fakes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailgate.providers.fakes.base import Received
from tests.conftest import ENGINES, _require
from tests.e2e.processes import KEY, URL, mailgate, wait_status, write_config
from tests.helpers import Fakes, eventually


@dataclass
class Gateway:
    url: str
    key: str
    """An admin key of the tenant `default`."""
    fakes: Fakes
    api: httpx.AsyncClient
    """mailgate's own API with `key`, to look at what was accepted."""

    async def message(self, message_id: str, *statuses: str) -> dict[str, Any]:
        """The message (mailgate's JSON) once its status is one of `statuses`."""
        return await wait_status(self.api, message_id, *(statuses or ("sent", "delivered")))

    async def delivered(self, message_id: str) -> Received:
        """What the provider mailgate sent `message_id` through received (waiting for it)."""
        found: list[Received] = []

        async def arrived() -> bool:
            found[:] = [
                r
                for r in (*self.fakes.sendgrid.received, *self.fakes.mailgun.received)
                if r.mailgate_id == message_id
            ]
            return bool(found)

        await eventually(arrived, timeout=20)
        assert len(found) == 1, found
        return found[0]

    async def key_of(self, *scopes: str, tenant: dict[str, Any] | None = None) -> str:
        """A new key with `scopes` (of `tenant`, a body for `POST /v1/tenants`, if given)."""
        body: dict[str, Any] = {"name": "compat-test", "scopes": list(scopes)}
        if tenant is not None:
            made = await self.api.post("/v1/tenants", json=tenant)
            assert made.status_code == 201, made.text
            body["tenant_id"] = made.json()["id"]
        created = await self.api.post("/v1/keys", json=body)
        assert created.status_code == 201, created.text
        return str(created.json()["key"])


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str | None) -> str:
    """Both engines, as everywhere; but a test marked `refusal` (a request refused before
    the store writes anything, checked case by case) runs on SQLite alone."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/mailgate.db"
    if request.node.get_closest_marker("refusal") is not None:
        pytest.skip("refused before the store writes anything: one engine is enough")
    return _require(postgres_url)


@pytest.fixture
async def gateway(tmp_path: Path, fakes: Fakes) -> AsyncIterator[Gateway]:
    """`mailgate serve` on SQLite; it delivers through the SendGrid fake (then Mailgun's)."""
    config = write_config(
        tmp_path / "mailgate.toml",
        f"sqlite:///{tmp_path}/mailgate.db",
        fakes.providers(),
        poll_interval_seconds=0.1,
    )
    async with mailgate("serve", "--port", "0", "--config", str(config), cwd=tmp_path) as proc:
        url = (await proc.wait_for(URL))[1]
        key = (await proc.wait_for(KEY))[1]
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as api:
            yield Gateway(url, key, fakes, api)
        assert await proc.stop() == 0


@pytest.fixture(scope="session")
def django_settings() -> Iterator[None]:
    """Django configured once for this process (it can only be configured once); each test
    picks its anymail backend with `django.test.override_settings`."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
            ANYMAIL={},
            INSTALLED_APPS=["anymail"],
            USE_TZ=True,
        )
        django.setup()
    yield
