"""Settings: one TOML file plus `MAILGATE_<SECTION>__<KEY>` variables.

`load_settings` is the one way the CLI builds them; tests build `Settings(...)`
directly. Unknown keys and placeholder secrets are refused with a
`ConfigError` that names the key and its variable.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mailgate.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///.mailgate/mailgate.db"

_PLACEHOLDERS = {"", "...", "changeme", "change-me", "changethis", "secret", "xxx", "todo"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8025, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    """API processes `serve` runs (`serve --workers N`); more than one adds a supervisor."""
    one_process: bool = False
    """Run the API and the worker in one process (`serve --one-process`). By default, on a
    machine with more than one core, `serve` delivers from a process of its own."""
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Requests larger than this are refused with 413 before they are parsed."""
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=32 * 1024)
    """Headers (as `name: value` lines) above this get 431; the server reads no head over 64 KiB."""
    max_headers: int = Field(default=100, ge=16, le=1000)
    """Requests with more headers than this are refused with 431."""
    max_query_bytes: int = Field(default=4096, ge=256, le=16 * 1024)
    """Query strings longer than this are refused with 414."""
    max_path_bytes: int = Field(default=2048, ge=256, le=8 * 1024)
    """Paths (as sent, before percent-decoding) longer than this are refused with 414."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class ConsoleSettings(_Section):
    enabled: bool = True
    """The web console at `/ui` (it uses the same keys, scopes and store as the API)."""
    session_minutes: int = Field(default=720, ge=1, le=60 * 24 * 30)
    """How long a console login lasts; logging out ends it at once."""


class DatabaseSettings(_Section):
    url: str = DEFAULT_DATABASE_URL
    pool_size: int = Field(default=10, ge=1)
    auto_migrate: bool = True
    busy_timeout_seconds: float = Field(default=5.0, gt=0)
    """How long a write waits for a lock (SQLite) or a connection (PostgreSQL) before 503."""
    statement_timeout_seconds: float = Field(default=15.0, gt=0)
    """PostgreSQL: the longest one statement may take before it fails (no hang on a dead link)."""


class DeliverySettings(_Section):
    concurrency: int = Field(default=200, ge=1)
    attempt_timeout_seconds: float = Field(default=10.0, gt=0)
    retry_initial_seconds: float = Field(default=30.0, gt=0)
    retry_max_seconds: float = Field(default=3600.0, gt=0)
    max_age_seconds: float = Field(default=86400.0, gt=0)
    lease_seconds: float = Field(default=60.0, gt=0)
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    """How often an idle worker looks for due work (accepts in its own process wake it at once)."""
    claim_batch: int = Field(default=100, ge=1)
    default_from: str | None = None
    """The sender `mailgate send` uses when `--from` is not given."""


def _not_placeholder(value: SecretStr) -> SecretStr:
    if value.get_secret_value().strip().lower() in _PLACEHOLDERS:
        raise ValueError("is a placeholder; set the real secret")
    return value


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|min|minute|h|hour)\s*$")
_PER = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(value: str) -> float:
    """Sends per second from `"100/s"`, `"600/min"` or `"3600/h"`."""
    match = _RATE.match(value)
    if match is None:
        raise ValueError(f"rate {value!r} is not N/s, N/min or N/h")
    rate = float(match[1]) / _PER[match[2]]
    if rate <= 0:
        raise ValueError("a rate limit must be above zero")
    return rate


def _rate(value: str | None) -> str | None:
    if value is not None:
        parse_rate(value)
    return value


class _ProviderBase(_Section):
    name: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,64}$")]
    priority: int = 1
    weight: int = Field(default=1, ge=1)
    enabled: bool = True
    rate_limit: Annotated[str | None, AfterValidator(_rate)] = None
    """Sends per second, minute or hour across every worker (`"100/s"`); none by default."""
    daily_quota: int | None = Field(default=None, ge=1)
    """Sends per UTC day across every worker; then the provider waits for tomorrow."""
    breaker_window_seconds: float = Field(default=60.0, gt=0)
    breaker_min_calls: int = Field(default=10, ge=1)
    breaker_failure_ratio: float = Field(default=0.5, gt=0, le=1)
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)
    breaker_half_open_calls: int = Field(default=1, ge=1, le=100)
    """Probe calls let through after the cool-down; all must pass to close the breaker."""
    health_probe_seconds: float = Field(default=0.0, ge=0)
    """Check the provider's credentials this often with a cheap call; 0 = never."""

    @property
    def rate_per_second(self) -> float | None:
        return parse_rate(self.rate_limit) if self.rate_limit is not None else None


class HttpProviderSettings(_ProviderBase):
    """A provider reached over HTTPS; each type sets its own default `base_url`."""

    base_url: str
    webhook_secret: SecretStr | None = None
    """What verifies the provider's event webhook: SendGrid's verification public key,
    Mailgun's webhook signing key, Mandrill's webhook key, Resend's `whsec_` secret."""
    webhook_username: str | None = None
    """The basic-auth pair Postmark, Mailjet, SparkPost and Brevo post their events with."""
    webhook_password: SecretStr | None = None
    webhook_sns_topic_arn: str | None = None
    """SES: the SNS topic whose signed notifications are taken (others are refused)."""


def _secret_field() -> Any:
    return field_validator("api_key")(_not_placeholder)


class SendGridSettings(HttpProviderSettings):
    type: Literal["sendgrid"]
    api_key: SecretStr
    base_url: str = "https://api.sendgrid.com"

    _check_key = _secret_field()


class MailgunSettings(HttpProviderSettings):
    type: Literal["mailgun"]
    api_key: SecretStr
    domain: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9.-]+$")]
    base_url: str = "https://api.mailgun.net"

    _check_key = _secret_field()


class SesSettings(HttpProviderSettings):
    """Amazon SES v2; `base_url` defaults to `https://email.{region}.amazonaws.com`."""

    type: Literal["ses"]
    access_key_id: Annotated[str, Field(min_length=1)]
    secret_access_key: SecretStr
    session_token: SecretStr | None = None
    region: Annotated[str, Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")]
    configuration_set: str | None = None
    base_url: str = ""

    _check_secret = field_validator("secret_access_key")(_not_placeholder)

    @model_validator(mode="after")
    def _default_endpoint(self) -> SesSettings:
        if not self.base_url:
            object.__setattr__(self, "base_url", f"https://email.{self.region}.amazonaws.com")
        return self


class PostmarkSettings(HttpProviderSettings):
    type: Literal["postmark"]
    api_key: SecretStr
    """The server token."""
    message_stream: str = "outbound"
    base_url: str = "https://api.postmarkapp.com"

    _check_key = _secret_field()


class ResendSettings(HttpProviderSettings):
    type: Literal["resend"]
    api_key: SecretStr
    base_url: str = "https://api.resend.com"

    _check_key = _secret_field()


class BrevoSettings(HttpProviderSettings):
    type: Literal["brevo"]
    api_key: SecretStr
    base_url: str = "https://api.brevo.com"

    _check_key = _secret_field()


class MailjetSettings(HttpProviderSettings):
    type: Literal["mailjet"]
    api_key: SecretStr
    api_secret: SecretStr
    base_url: str = "https://api.mailjet.com"

    _check_key = _secret_field()
    _check_secret = field_validator("api_secret")(_not_placeholder)


class SparkPostSettings(HttpProviderSettings):
    type: Literal["sparkpost"]
    api_key: SecretStr
    base_url: str = "https://api.sparkpost.com"

    _check_key = _secret_field()


class MandrillSettings(HttpProviderSettings):
    type: Literal["mandrill"]
    api_key: SecretStr
    base_url: str = "https://mandrillapp.com"

    _check_key = _secret_field()


class SmtpSettings(_ProviderBase):
    """Any SMTP relay (aiosmtplib)."""

    type: Literal["smtp"]
    host: Annotated[str, Field(min_length=1)]
    port: int = Field(default=587, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    ca_file: Path | None = None
    """A PEM bundle to verify the relay with; default: the system's trust store."""
    max_connections: int = Field(default=10, ge=1, le=1000)
    """Connections open to the relay at most (relays cap connections per client)."""


ProviderSettings = Annotated[
    SendGridSettings
    | MailgunSettings
    | SesSettings
    | PostmarkSettings
    | ResendSettings
    | BrevoSettings
    | MailjetSettings
    | SparkPostSettings
    | MandrillSettings
    | SmtpSettings,
    Field(discriminator="type"),
]
PROVIDER_TYPES = (
    "sendgrid", "mailgun", "ses", "postmark", "resend", "brevo", "mailjet", "sparkpost",
    "mandrill", "smtp",
)  # fmt: skip


class WebhookSettings(_Section):
    """Deliveries of events to the tenants' own endpoints."""

    timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    """A 2xx within this is a success."""
    block_private_addresses: bool = False
    """Refuse endpoints that resolve to loopback, link-local or private ranges (SSRF)."""
    concurrency: int = Field(default=50, ge=1, le=1000)
    """Deliveries in flight per worker process."""
    retry_initial_seconds: float = Field(default=5.0, gt=0)
    """The wait after a first failed try; each later wait is three times longer."""
    retry_max_seconds: float = Field(default=4 * 3600.0, gt=0)
    max_age_seconds: float = Field(default=86400.0, gt=0)
    """A delivery still failing this long after its event is given up (`failed`)."""
    disable_after_seconds: float = Field(default=86400.0, gt=0)
    """An endpoint that has failed every try for this long is disabled."""


class SmtpServerSettings(_Section):
    """SMTP submission inside `mailgate serve` (docs/smtp.md): mail in, the same accept path."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=0, le=65535)
    tls_cert_file: str = ""
    """A PEM certificate chain; when set, STARTTLS is offered."""
    tls_key_file: str = ""
    """The certificate's private key (PEM); empty: it is in `tls_cert_file`."""
    require_tls: bool = True
    """With a certificate: AUTH only after STARTTLS, so keys never cross the network in clear."""
    max_message_bytes: int = Field(default=35 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    """Advertised with SIZE; larger messages are refused (`552 5.3.4`)."""

    @field_validator("tls_key_file")
    @classmethod
    def _key_needs_certificate(cls, value: str, info: ValidationInfo) -> str:
        if value and not info.data.get("tls_cert_file"):
            raise ValueError("is set but tls_cert_file is not")
        return value


class Settings(BaseSettings):
    """All of mailgate's settings. Variables override the file; both override defaults."""

    model_config = SettingsConfigDict(
        env_prefix="MAILGATE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    delivery: DeliverySettings = DeliverySettings()
    webhooks: WebhookSettings = WebhookSettings()
    console: ConsoleSettings = ConsoleSettings()
    smtp_server: SmtpServerSettings = SmtpServerSettings()
    providers: list[ProviderSettings] = []

    @field_validator("providers")
    @classmethod
    def _unique_names(cls, providers: list[ProviderSettings]) -> list[ProviderSettings]:
        seen: set[str] = set()
        for p in providers:
            if p.name in seen:
                raise ValueError(f"provider name {p.name!r} is used twice")
            seen.add(p.name)
        return providers

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's contents arrive as init arguments; variables win over them.
        return (env_settings, init_settings)

    @property
    def simulated(self) -> bool:
        """No providers configured: `serve` starts simulated ones on loopback."""
        return not self.providers


def load_settings(
    path: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build settings from a TOML file (`path`, else `MAILGATE_CONFIG`) and the environment."""
    environ = os.environ if environ is None else environ
    if path is None and environ.get("MAILGATE_CONFIG"):
        path = environ["MAILGATE_CONFIG"]
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"config file {path} does not exist (--config / MAILGATE_CONFIG)"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, data)) from None


def describe_validation_error(exc: ValidationError, data: Mapping[str, Any] | None = None) -> str:
    """One line per problem, each naming the key and the variable that sets it."""
    lines = []
    for error in exc.errors():
        loc = [part for part in error["loc"] if not _is_union_tag(part)]
        key = _dotted(loc, data or {})
        msg = error["msg"]
        if error["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{key}: {msg}{_variable_hint(loc)}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _is_union_tag(part: int | str) -> bool:
    return isinstance(part, str) and part in PROVIDER_TYPES


def _dotted(loc: list[int | str], data: Mapping[str, Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    if len(loc) >= 2 and loc[0] == "providers" and isinstance(loc[1], int):
        providers = data.get("providers") or []
        if loc[1] < len(providers) and isinstance(providers[loc[1]], dict):
            name = providers[loc[1]].get("name")
            if name:
                out += f" (provider {name!r})"
    return out


def _variable_hint(loc: list[int | str]) -> str:
    if not loc or loc[0] == "providers" or len(loc) > 2:
        return (
            " (in the config file, or MAILGATE_PROVIDERS as JSON)"
            if loc[:1] == ["providers"]
            else ""
        )
    return f" (MAILGATE_{'__'.join(str(p).upper() for p in loc)})"
