"""Group commit: many concurrent writes, one transaction, one fsync.

A durable commit costs one fsync (about 0.2 ms on this machine's disk, so
near 5,000 commits/s at best). Callers `submit` an item and wait; one task
takes everything submitted so far, writes it in one transaction and answers
every caller only after that commit. While it commits, the next group
gathers, so batches grow exactly as fast as load does and a lone request
waits for nobody.

Whatever a group's rows need that the database does not (their values in
the driver's form, JSON text) is made by `prepare` before the transaction.
A `flush` may answer one item with an exception (say, an idempotency key
reused with another body) without failing the others. If the transaction
itself fails with an integrity error (a race with another process) or a
value the store cannot keep, the items are retried one by one so one bad
item cannot sink its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from mailgate.errors import InvalidRequest, StoreUnavailable
from mailgate.store.engine import Database

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[Connection, Sequence[T], Any], Sequence[R | Exception]]
"""Write a group in the open transaction: `flush(conn, items, prepared)`, an answer per item."""
Prepare = Callable[[Sequence[T], str], Any]
"""What a flush can make of its items without the database (`prepare(items, dialect)`)."""


class _Answers(Generic[R]):
    """The answers to one `submit` or `submit_many`, an answer per item, handed over
    together once the last of them is in. One future per call, not per item: a
    future per message of a batch (each with its done callback, gathered) cost 2 µs
    a message, a twentieth of a batch accept's time on the loop."""

    __slots__ = ("future", "left", "results")

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.future: asyncio.Future[list[R | Exception]] = loop.create_future()
        self.results: list[R | Exception] = [None] * size  # type: ignore[list-item]
        self.left = size

    def put(self, index: int, result: R | Exception) -> None:
        if self.future.done():
            return  # the caller went away; the write stands
        self.results[index] = result
        self.left -= 1
        if self.left == 0:
            self.future.set_result(self.results)


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        database: Database,
        flush: Flush[T, R],
        *,
        name: str,
        max_batch: int = 1000,
        after_commit: Callable[[Sequence[T]], None] | None = None,
        prepare: Prepare[T] | None = None,
    ) -> None:
        self._database = database
        self._flush = flush
        self._prepare = prepare
        self._name = name
        self._max_batch = max_batch
        self._after_commit = after_commit
        self._pending: list[tuple[T, _Answers[R], int]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def submit(self, item: T) -> R:
        """Write `item` with whatever else is waiting; return once it is committed."""
        (result,) = await self._enqueue([item]).future
        if isinstance(result, Exception):
            raise result
        return result

    async def submit_many(self, items: Sequence[T]) -> list[R | Exception]:
        """Like `submit` for each item; an item's error is returned in its place."""
        if not items:
            return []
        return await self._enqueue(items).future

    def _enqueue(self, items: Sequence[T]) -> _Answers[R]:
        if self._closed:
            raise StoreUnavailable(f"{self._name}: store is shutting down")
        loop = asyncio.get_running_loop()
        answers: _Answers[R] = _Answers(loop, len(items))
        self._pending.extend([(item, answers, index) for index, item in enumerate(items)])
        if self._task is None:
            self._task = loop.create_task(self._run(), name=f"group-commit-{self._name}")
        self._wakeup.set()
        return answers

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._commit(batch)
            if self._closed:
                return

    async def _commit(
        self, batch: list[tuple[T, _Answers[R], int]], *, alone: bool = False
    ) -> None:
        items = [item for item, _, _ in batch]
        try:
            # Made before the transaction: on SQLite its write lock, which other
            # processes may be waiting for, is held only for the statements.
            prepared = self._prepare(items, self._database.dialect) if self._prepare else None
            results = await self._database.write(self._flush, items, prepared)
        except IntegrityError as exc:
            if len(batch) > 1:
                for one in batch:
                    await self._commit([one])
            elif not alone:
                await self._commit(batch, alone=True)  # a lost race: the retry sees the winner
            else:
                _fail(batch, StoreUnavailable(f"{self._name}: integrity error: {exc.orig}"))
            return
        except InvalidRequest as exc:  # a value the store cannot keep: whose is it?
            if len(batch) > 1:
                for one in batch:
                    await self._commit([one])
            else:
                _fail(batch, exc)
            return
        except Exception as exc:
            if not isinstance(exc, StoreUnavailable):
                log.exception("%s: write failed", self._name)
            _fail(batch, exc)
            return
        if self._after_commit is not None:
            self._after_commit(items)
        for (_, answers, index), result in zip(batch, results, strict=True):
            answers.put(index, result)

    async def close(self) -> None:
        """Write what is pending, then stop taking items."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None


def _fail(batch: Sequence[tuple[object, _Answers[R], int]], exc: Exception) -> None:
    for _, answers, index in batch:
        answers.put(index, exc)
