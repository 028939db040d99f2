"""Reading a bounded part of an HTTP body."""

from __future__ import annotations

import aiohttp


async def read_at_most(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The body's first `limit` bytes, or all of it if shorter.

    `StreamReader.read(n)` answers with what has arrived so far (up to `n`), which
    may be a part of a body that goes on: how much depends on how the server's
    writes fell into segments.
    """
    parts: list[bytes] = []
    left = limit
    while left > 0:
        part = await content.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)
