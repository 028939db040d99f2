"""Parsing and checking email addresses given as `"Name <a@b.c>"`, `"a@b.c"` or objects.

The address itself is checked by email-validator (syntax only: no DNS, so
accepting never waits on the network). Display names may be any Unicode
text, quoted or not, but never line breaks or control characters: those
are how header injection gets in.
"""

from __future__ import annotations

import re
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from mailgate.message import Address

_ANGLE = re.compile(r"^(?P<name>[^<>]*)<(?P<email>[^<>]*)>\s*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class AddressError(ValueError):
    pass


def check_no_control(value: str, what: str = "value") -> str:
    """Refuse CR, LF and other control characters (header injection)."""
    if _CONTROL.search(value):
        raise AddressError(f"{what} must not contain line breaks or control characters")
    return value


@lru_cache(maxsize=16384)
def normalize_email(email: str) -> str:
    """The normalized form of a bare address, or AddressError saying what is wrong."""
    check_no_control(email, "address")
    try:
        return validate_email(email.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise AddressError(f"invalid address {email.strip()!r}: {exc}") from None


def clean_name(name: str | None) -> str | None:
    if name is None:
        return None
    check_no_control(name, "display name")
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if len(name) > 256:
        raise AddressError("display name is longer than 256 characters")
    return name or None


@lru_cache(maxsize=16384)
def parse_address(text: str) -> Address:
    """`"Name <a@b.c>"` or `"a@b.c"` as an `Address`."""
    check_no_control(text, "address")
    match = _ANGLE.match(text.strip())
    if match is None:
        return Address(email=normalize_email(text))
    return Address(email=normalize_email(match["email"]), name=clean_name(match["name"]))
