"""The client needs none of the server at import time."""

from __future__ import annotations

import subprocess
import sys

SERVER = ("fastapi", "starlette", "sqlalchemy", "alembic", "uvicorn", "pydantic", "jinja2")


def test_importing_the_client_loads_no_server_module() -> None:
    script = (
        "import sys, mailgate.client\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{SERVER!r} or (m.startswith('mailgate.') and not m.startswith('mailgate.client')))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == []
