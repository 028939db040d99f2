"""Message ids: sortable, unique, and the same text RFC 4648 base32 would make."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta

from mailgate.message import _encode, first_id_at, new_id

RFC4648_TO_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)


def by_rfc4648(millis: int, rest: bytes) -> str:
    raw = millis.to_bytes(6, "big") + rest
    return base64.b32encode(raw)[:26].translate(RFC4648_TO_CROCKFORD).decode()


def test_the_encoding_is_base32_in_crockfords_alphabet() -> None:
    cases = [(0, bytes(10)), (2**48 - 1, b"\xff" * 10), (1, b"\x80" + bytes(9))]
    cases += [(int.from_bytes(os.urandom(6), "big"), os.urandom(10)) for _ in range(500)]
    for millis, rest in cases:
        assert _encode(millis, rest) == by_rfc4648(millis, rest)


def test_ids_are_unique_and_sort_by_time() -> None:
    ids = [new_id("msg") for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("msg_") and len(i) == 30 for i in ids)
    millis = [i[4:13] for i in ids]  # 45 of the 48 bits of time
    assert millis == sorted(millis)  # the time part never goes back within a process


def test_first_id_at_is_the_lowest_id_of_its_millisecond() -> None:
    now = datetime.now(UTC)
    made = new_id("msg")
    assert first_id_at("msg", now - timedelta(milliseconds=1)) < made
    assert first_id_at("msg", now + timedelta(seconds=1)) > made
    assert first_id_at("msg", datetime(1970, 1, 1, tzinfo=UTC)) == "msg_" + "0" * 26
