"""PostgreSQL-only measures: a commit per request, and claims against a plain SKIP LOCKED."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bench.harness import MESSAGE, database
from mailgate.config import DatabaseSettings
from mailgate.store import Store

CLAIMS = 50  # of 100 rows each, per run
_PLAIN_CLAIM = """
UPDATE messages SET status = 'sending', lease_owner = 'plain', lease_until = now() + interval '60 s'
WHERE id IN (
    SELECT id FROM messages
    WHERE status IN ('queued', 'scheduled') AND next_attempt_at <= now()
    ORDER BY next_attempt_at LIMIT 100
    FOR UPDATE SKIP LOCKED
)
RETURNING id
"""
_BULK = [
    """
    INSERT INTO messages (id, tenant_id, status, envelope, next_attempt_at, window_start, rounds,
                          created_at, updated_at)
    SELECT 'msg_' || lpad(g::text, 26, '0'), 'default', 'queued',
           CAST(:envelope AS json), now() - interval '1 day' + g * interval '1 millisecond',
           now(), 0, now(), now()
    FROM generate_series(1, CAST(:queued AS integer)) AS g
    """,
    """
    INSERT INTO message_bodies (message_id, body)
    SELECT id, CAST('{"text": "Hi", "html": null, "headers": {}, "attachments": []}' AS json)
    FROM messages
    """,
    "ANALYZE messages",
]


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def baseline_commits(n: int, clients: int = 64, pool_size: int = 16) -> float:
    """Commits/s with one INSERT per transaction: an accept without group commit."""
    with tempfile.TemporaryDirectory() as tmp:
        async with database("postgresql", Path(tmp)) as url:
            pool = await asyncpg.create_pool(_dsn(url), min_size=pool_size, max_size=pool_size)
            try:
                await pool.execute("CREATE TABLE t (id bigserial PRIMARY KEY, body json)")
                body = json.dumps(MESSAGE)
                todo = iter(range(n))

                async def client() -> None:
                    for _ in todo:
                        await pool.execute("INSERT INTO t (body) VALUES ($1)", body)

                started = time.perf_counter()
                await asyncio.gather(*(client() for _ in range(clients)))
                return n / (time.perf_counter() - started)
            finally:
                await pool.close()


async def claim_rates(queued: int, *, repeats: int) -> list[dict[str, float]]:
    """Rows/s claimed by one client, 100 at a time: plain SKIP LOCKED, then mailgate's claim.

    One database with `queued` messages serves every repeat; after each run
    the claimed rows go back to the queue, so every run sees `queued` rows.
    """
    envelope = {k: v for k, v in MESSAGE.items() if k != "text"} | {
        "to": [{"email": "reader@example.org"}],
        "from": {"email": "bench@example.com"},
        "cc": [], "bcc": [], "reply_to": [], "metadata": {},
    }  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        async with database("postgresql", Path(tmp)) as url:
            store = Store(DatabaseSettings(url=url))
            await store.migrate()
            params = {"envelope": json.dumps(envelope), "queued": queued}
            await store.db.write(lambda conn: [conn.execute(text(sql), params) for sql in _BULK])
            plain = await asyncpg.connect(_dsn(url))
            try:
                for _ in range(repeats):
                    started = time.perf_counter()
                    rows = 0
                    for _ in range(CLAIMS):
                        rows += len(await plain.fetch(_PLAIN_CLAIM))
                    plain_rate = rows / (time.perf_counter() - started)
                    started = time.perf_counter()
                    rows = 0
                    for _ in range(CLAIMS):
                        rows += len(await store.claim("bench", limit=100, lease_seconds=60))
                    results.append(
                        {
                            "plain_per_s": plain_rate,
                            "mailgate_per_s": rows / (time.perf_counter() - started),
                        }
                    )
                    await plain.execute(
                        "UPDATE messages SET status = 'queued', lease_owner = NULL, "
                        "lease_until = NULL WHERE status = 'sending'"
                    )
                    await plain.execute("VACUUM ANALYZE messages")
                    print(
                        f"    run {len(results)}: plain {plain_rate:,.0f} rows/s, "
                        f"mailgate {results[-1]['mailgate_per_s']:,.0f} rows/s",
                        flush=True,
                    )
            finally:
                await plain.close()
                await store.close()
    return results
