"""The JSON shapes of tenants, keys, `/v1/me` and the audit log (`reference/interface.md`).

Unknown fields are refused with the field named, as everywhere in the API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mailgate.api.addresses import AddressError, check_no_control, normalize_email, parse_address
from mailgate.config import parse_rate
from mailgate.store import Scope

_NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,127}$"


def _domain(value: str) -> str:
    """A domain as email-validator normalizes it (lower case, Unicode kept)."""
    if "@" in value:
        raise ValueError(f"{value!r} is a domain, not an address: give what follows the @")
    try:
        return normalize_email(f"postmaster@{value}").rpartition("@")[2]
    except AddressError:
        raise ValueError(f"{value!r} is not a valid domain") from None


def _domains(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _address(value: str) -> str:
    """`Name <a@b.c>` or `a@b.c`, kept as given once it parses."""
    try:
        check_no_control(value, "address")
        return parse_address(value).formatted()
    except AddressError as exc:
        raise ValueError(str(exc)) from None


def _rate(value: str) -> str:
    parse_rate(value)
    return value.strip()


def _unique(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("names a provider twice")
    return values


Domain = Annotated[str, Field(min_length=1, max_length=253), AfterValidator(_domain)]
SenderDomains = Annotated[list[Domain], Field(max_length=100), AfterValidator(_domains)]
DefaultFrom = Annotated[str, Field(min_length=3, max_length=320), AfterValidator(_address)]
ProviderNames = Annotated[
    list[Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,64}$")]],
    Field(min_length=1, max_length=50),
    AfterValidator(_unique),
]
RateLimit = Annotated[str, Field(max_length=32), AfterValidator(_rate)]
TenantName = Annotated[str, Field(pattern=_NAME)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantIn(_Model):
    """A new tenant (`POST /v1/tenants`)."""

    name: TenantName
    sender_domains: SenderDomains = Field(default_factory=list)
    """A `from` must be in one of these (exact domain); empty: any."""
    default_from: DefaultFrom | None = None
    providers: ProviderNames | None = None
    """The configured providers its mail may use, in their configured order; null: all."""
    rate_limit: RateLimit | None = None
    """API requests across every process: `"N/s"`, `"N/min"` or `"N/h"`; null: none."""
    daily_quota: Annotated[int, Field(ge=1, le=1_000_000_000)] | None = None
    """Messages per UTC day across every process; null: none."""


class TenantPatch(_Model):
    """A change to a tenant (`PATCH /v1/tenants/{id}`): only the fields given change."""

    name: TenantName | None = None
    sender_domains: SenderDomains | None = None
    default_from: DefaultFrom | None = None
    providers: ProviderNames | None = None
    rate_limit: RateLimit | None = None
    daily_quota: Annotated[int, Field(ge=1, le=1_000_000_000)] | None = None


class TenantOut(_Model):
    id: str
    name: str
    enabled: bool
    sender_domains: list[str]
    default_from: str | None
    providers: list[str] | None
    rate_limit: str | None
    daily_quota: int | None
    used_today: int | None
    created_at: datetime
    updated_at: datetime


class TenantList(_Model):
    data: list[TenantOut]
    next_cursor: str | None


class KeyIn(_Model):
    """A new key (`POST /v1/keys`); its secret is in the answer, once."""

    name: Annotated[str, Field(min_length=1, max_length=128), AfterValidator(check_no_control)]
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=4)]
    tenant_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    """Absent: the calling key's tenant. Another tenant's needs an admin key."""


class KeyOut(_Model):
    id: str
    name: str
    tenant_id: str
    scopes: list[Scope]
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str
    """The secret: shown this once, stored only as a hash."""


class KeyList(_Model):
    data: list[KeyOut]
    next_cursor: str | None


class MeOut(_Model):
    key: KeyOut
    tenant: TenantOut


class AuditOut(_Model):
    id: int
    at: datetime
    key_id: str | None
    tenant_id: str
    action: str
    target: str
    detail: dict[str, Any]


class AuditList(_Model):
    data: list[AuditOut]
    next_cursor: str | None
