"""The `case` fixture: every shared provider test runs once per provider.

Each provider's case (adapter, fake, and how to read the fake back) lives in
`tests/providers/cases/<name>.py`; see `support.py` for what a case offers.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.providers.support import ProviderCase

PROVIDERS = sorted(
    p.stem for p in (Path(__file__).parent / "cases").glob("*.py") if p.stem != "__init__"
)


@pytest.fixture(params=PROVIDERS)
async def case(request: pytest.FixtureRequest) -> AsyncIterator[ProviderCase]:
    module = importlib.import_module(f"tests.providers.cases.{request.param}")
    async with module.open_case() as opened:
        yield opened
