"""Amazon SES v2 SendEmail (`POST /v2/email/outbound-emails`, JSON, AWS SigV4).

SES builds the MIME message from `Content.Simple`; our message id travels as
the `X-Mailgate-Id` header and as the `mailgate_id` message tag (tags come
back in every event SES publishes). The provider's id is the response's
`MessageId`, the `mail.messageId` of those events.

Every request is signed on its own, just before it leaves (SES refuses a
signature older than 15 minutes), with botocore's SigV4 pieces and a clock
the caller can replace (tests, and nothing else, do).

SES takes less than mailgate accepts: ASCII-only header values and display
names (we write RFC 2047 encoded-words), 15 headers, 50 recipients, tags of
`[A-Za-z0-9_-]` up to 256 characters (we escape, see `encode_tag`), 40 MB.
A message past those limits is not SES's to send but may suit another
provider, so it fails over (`ProviderUnavailable`) before any request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.charset import Charset
from email.utils import formataddr
from typing import Any
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from mailgate.config import SesSettings
from mailgate.errors import (
    MessageRejected,
    ProviderAuthError,
    ProviderError,
    ProviderThrottled,
    ProviderUnavailable,
)
from mailgate.message import Address, Email, ascii_domain
from mailgate.providers.base import (
    MAX_RETRY_AFTER_SECONDS,
    HttpProvider,
    HttpRequest,
    HttpResponse,
    SendResult,
)

SEND_PATH = "/v2/email/outbound-emails"
ACCOUNT_PATH = "/v2/email/account"
SIGNING_SERVICE = "ses"
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

MAX_HEADERS = 15
"""`Content.Simple.Headers` entries, `X-Mailgate-Id` included."""
MAX_HEADER_VALUE = 995
MAX_HEADER_LINE = 996
"""Name plus value."""
MAX_RECIPIENTS = 50
MAX_TAGS = 50
"""A cautious cap on `EmailTags`: SES's API reference gives none."""
MAX_TAG_LENGTH = 256
MAX_MESSAGE_BYTES = 40 * 1024 * 1024

MAILGATE_ID_TAG = "mailgate_id"
TAG_PREFIX = "mailgate_tag_"
"""Tag i (from 1) is the message tag `mailgate_tag_<i>`; metadata keys are tag names."""

DAILY_QUOTA_PAUSE = MAX_RETRY_AFTER_SECONDS
"""How long "Daily message quota exceeded" pauses the provider (see `classify_error`)."""

_AUTH_CODES = frozenset(
    {
        "AccountSuspendedException", "SendingPausedException",
        "MailFromDomainNotVerifiedException", "InvalidClientTokenId",
        "UnrecognizedClientException", "AccessDeniedException", "AccessDenied",
        "SignatureDoesNotMatch", "InvalidSignatureException", "IncompleteSignature",
        "IncompleteSignatureException", "MissingAuthenticationToken",
        "MissingAuthenticationTokenException", "ExpiredToken", "ExpiredTokenException",
        "NotAuthorized", "OptInRequired",
    }
)  # fmt: skip
_THROTTLE_CODES = frozenset(
    {
        "TooManyRequestsException", "ThrottlingException", "Throttling",
        "LimitExceededException", "RequestLimitExceeded",
    }
)  # fmt: skip
_CLOCK_SKEW = re.compile(r"signature (expired|not yet current)", re.IGNORECASE)
_TAG_SAFE = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPE_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_UTF8 = Charset("utf-8")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _DoesNotFit(Exception):
    """The message is beyond what SES takes; another provider may take it."""


class SesProvider(HttpProvider):
    type = "ses"

    def __init__(
        self,
        settings: SesSettings,
        *,
        timeout: float,
        max_connections: int = 100,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        super().__init__(settings, timeout=timeout, max_connections=max_connections)
        self.region = settings.region
        self.configuration_set = settings.configuration_set
        self._access_key_id = settings.access_key_id
        self._secret = settings.secret_access_key
        self._token = settings.session_token
        self._clock = clock
        self._url = f"{self.base_url}{SEND_PATH}"

    def build_request(self, message_id: str, email: Email) -> HttpRequest:
        try:
            payload = self._payload(message_id, email)
        except _DoesNotFit as exc:
            raise ProviderUnavailable(self.name, f"SES cannot take this message: {exc}") from None
        body = json.dumps(payload).encode()  # signed, and sent byte for byte
        if len(body) > MAX_MESSAGE_BYTES:
            raise ProviderUnavailable(
                self.name, f"SES cannot take this message: {len(body)} bytes, over 40 MB"
            )
        headers = self._signed("POST", self._url, body, {"Content-Type": "application/json"})
        return HttpRequest("POST", self._url, headers=headers, data=body)

    def probe_request(self) -> HttpRequest:
        """GetAccount: signed like a send, so a bad key, secret or clock shows."""
        url = f"{self.base_url}{ACCOUNT_PATH}"
        return HttpRequest("GET", url, headers=self._signed("GET", url, b"", {}))

    def check_probe(self, response: HttpResponse) -> None:
        """GetAccount must answer, and say sending is enabled (it is not when paused)."""
        super().check_probe(response)
        data = response.json()
        if isinstance(data, dict) and data.get("SendingEnabled") is False:
            raise ProviderAuthError(
                self.name, "GetAccount: SendingEnabled is false", status_code=response.status
            )

    def _signed(
        self, method: str, url: str, body: bytes, headers: dict[str, str]
    ) -> dict[str, str]:
        headers = {"Host": _host(url), **headers}
        return headers | sign(
            method,
            url,
            headers.items(),
            body,
            access_key_id=self._access_key_id,
            secret_access_key=self._secret.get_secret_value(),
            session_token=self._token.get_secret_value() if self._token else None,
            region=self.region,
            now=self._clock(),
        )

    def _payload(self, message_id: str, email: Email) -> dict[str, Any]:
        recipients = len(email.to) + len(email.cc) + len(email.bcc)
        if recipients > MAX_RECIPIENTS:
            raise _DoesNotFit(f"{recipients} recipients; SES takes {MAX_RECIPIENTS}")
        destination = {"ToAddresses": [_address(a) for a in email.to]}
        if email.cc:
            destination["CcAddresses"] = [_address(a) for a in email.cc]
        if email.bcc:
            destination["BccAddresses"] = [_address(a) for a in email.bcc]
        body: dict[str, Any] = {}
        if email.text is not None:
            body["Text"] = {"Data": email.text, "Charset": "UTF-8"}
        if email.html is not None:
            body["Html"] = {"Data": email.html, "Charset": "UTF-8"}
        simple: dict[str, Any] = {
            "Subject": {"Data": email.subject, "Charset": "UTF-8"},
            "Body": body,
            "Headers": _headers({**email.headers, "X-Mailgate-Id": message_id}),
        }
        if email.attachments:
            simple["Attachments"] = [
                {
                    "FileName": a.filename,
                    "RawContent": a.content,
                    "ContentType": a.content_type,
                    "ContentDisposition": "ATTACHMENT",
                }
                for a in email.attachments
            ]
        payload: dict[str, Any] = {
            "FromEmailAddress": _address(email.sender),
            "Destination": destination,
            "Content": {"Simple": simple},
            "EmailTags": _tags(message_id, email.tags, email.metadata),
        }
        if email.reply_to:
            payload["ReplyToAddresses"] = [_address(a) for a in email.reply_to]
        if self.configuration_set:
            payload["ConfigurationSetName"] = self.configuration_set
        return payload

    def parse_success(self, response: HttpResponse) -> SendResult:
        data = response.json()
        if not isinstance(data, dict) or not data.get("MessageId"):
            raise self.not_a_success(response, "a MessageId")
        return SendResult(provider_message_id=str(data["MessageId"]))

    def describe_error(self, response: HttpResponse) -> str:
        code, message = error_code(response), error_message(response)
        if code is None and not message:
            return super().describe_error(response)
        detail = f"{code}: {message}" if code and message else code or message
        request_id = response.header("x-amzn-RequestId")
        return f"{detail} (request {request_id})" if request_id else detail

    def classify_error(self, response: HttpResponse) -> ProviderError:
        """SES's codes and messages per providers.md 3.G, the status for the rest.

        Clock skew (`RequestExpired`, "Signature expired") is our clock, not our
        key: unavailable, safe to retry, since every attempt is signed afresh.
        "Daily message quota exceeded" is throttling with the longest pause we
        allow (an hour): SES's window rolls over 24 h and says nothing of when
        room comes back, so the provider is left alone and looked at hourly,
        without the breaker churn a transient error would cause. "Not
        verified" (an unverified sender, or a sandbox recipient) is this
        account's setup, not the message: auth, so mail fails over and the
        breaker opens.
        """
        status, detail = response.status, self.describe_error(response)
        code, message = error_code(response) or "", error_message(response).lower()
        if code == "RequestExpired" or _CLOCK_SKEW.search(message):
            return ProviderUnavailable(self.name, detail, status_code=status)
        if code in _AUTH_CODES:
            return ProviderAuthError(self.name, detail, status_code=status)
        if "daily message quota exceeded" in message:
            return ProviderThrottled(
                self.name, detail, status_code=status, retry_after=DAILY_QUOTA_PAUSE
            )
        if code in _THROTTLE_CODES or "maximum sending rate exceeded" in message:
            return ProviderThrottled(
                self.name, detail, status_code=status, retry_after=self.retry_after(response)
            )
        if code == "MessageRejected" and "not verified" in message:
            return ProviderAuthError(self.name, detail, status_code=status)
        if code in ("MessageRejected", "BadRequestException"):
            return MessageRejected(self.name, detail, status_code=status)
        if code == "NotFoundException":  # the configuration set: our setup, not the message
            return ProviderUnavailable(self.name, detail, status_code=status)
        return super().classify_error(response)


def sign(
    method: str,
    url: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    *,
    access_key_id: str,
    secret_access_key: str,
    session_token: str | None = None,
    region: str,
    service: str = SIGNING_SERVICE,
    now: datetime,
) -> dict[str, str]:
    """The headers AWS Signature Version 4 adds to a request signed at `now`.

    `X-Amz-Date`, `X-Amz-Security-Token` (temporary credentials) and
    `Authorization`. Every header given is signed (repeat a name to give it
    several values). botocore's `SigV4Auth` does the canonical request,
    string to sign and signing key; its `add_auth` is not used because it
    reads the wall clock itself, and both tests and the fake need another.
    """
    request = AWSRequest(method=method, url=url, data=body)
    for name, value in headers:
        request.headers[name] = value  # botocore's headers keep repeated names
    timestamp = now.astimezone(UTC).strftime(AMZ_DATE_FORMAT)
    request.context["timestamp"] = timestamp
    added = {"X-Amz-Date": timestamp}
    if session_token:
        added["X-Amz-Security-Token"] = session_token
    for name, value in added.items():
        del request.headers[name]
        request.headers[name] = value
    signer = SigV4Auth(
        Credentials(access_key_id, secret_access_key, session_token), service, region
    )
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    signed_headers = signer.signed_headers(signer.headers_to_sign(request))
    added["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={signer.scope(request)}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )
    return added


def error_code(response: HttpResponse) -> str | None:
    """The error code as botocore reads a rest-json error: header, then body."""
    code = response.header("x-amzn-ErrorType")
    if not code:
        data = response.json()
        if isinstance(data, dict):
            found = data.get("code") or data.get("Code") or data.get("__type")
            code = str(found) if found else None
    if not code:
        return None
    return code.split(":", 1)[0].rsplit("#", 1)[-1] or None


def error_message(response: HttpResponse) -> str:
    """AWS's message, its first paragraph only: after a signature mismatch the rest is
    the canonical request AWS expected, with our signed headers in it."""
    data = response.json()
    if isinstance(data, dict):
        return str(data.get("message") or data.get("Message") or "").split("\n\n", 1)[0]
    return ""


def encode_tag(text: str, *, name: bool = False) -> str:
    """`text` in SES's tag alphabet (`[A-Za-z0-9_-]`), reversibly (`decode_tag`).

    Text already in that alphabet goes as it is. Anything else (and text
    starting with `_`, and names starting with `mailgate_`, which are ours)
    becomes `_` followed by the text with every byte outside `[A-Za-z0-9-]`
    written `_XX` in hex: `plan.pro` -> `_plan_2Epro`, `""` -> `_`.
    """
    plain = _TAG_SAFE.fullmatch(text) is not None and not text.startswith("_")
    if plain and not (name and text.startswith("mailgate_")):
        return text
    escaped = "".join(
        c if c in _ESCAPE_SAFE else "".join(f"_{b:02X}" for b in c.encode()) for c in text
    )
    return "_" + escaped


def decode_tag(text: str) -> str:
    """The text `encode_tag` was given (ValueError for text it cannot have made)."""
    if not text.startswith("_"):
        return text
    out, i, raw = bytearray(), 1, text.encode("ascii")
    while i < len(raw):
        if raw[i : i + 1] == b"_":
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode()


def _tags(
    message_id: str, tags: Iterable[str], metadata: Mapping[str, str]
) -> list[dict[str, str]]:
    pairs = [(MAILGATE_ID_TAG, encode_tag(message_id))]
    pairs += [(f"{TAG_PREFIX}{i}", encode_tag(tag)) for i, tag in enumerate(tags, 1)]
    pairs += [(encode_tag(k, name=True), encode_tag(v)) for k, v in metadata.items()]
    if len(pairs) > MAX_TAGS:
        raise _DoesNotFit(f"{len(pairs)} message tags (ours included); SES takes {MAX_TAGS}")
    for name, value in pairs:
        if len(name) > MAX_TAG_LENGTH or len(value) > MAX_TAG_LENGTH:
            raise _DoesNotFit(
                f"message tag {name[:40]!r} is over {MAX_TAG_LENGTH} characters once escaped"
            )
    return [{"Name": name, "Value": value} for name, value in pairs]


def _headers(headers: Mapping[str, str]) -> list[dict[str, str]]:
    if len(headers) > MAX_HEADERS:
        raise _DoesNotFit(
            f"{len(headers) - 1} custom headers; SES takes {MAX_HEADERS - 1} besides X-Mailgate-Id"
        )
    out = []
    for name, value in headers.items():
        if not (value.isascii() and value.isprintable()):
            value = _UTF8.header_encode(value)  # SES takes printable ASCII only
        if len(value) > MAX_HEADER_VALUE or len(name) + len(value) > MAX_HEADER_LINE:
            raise _DoesNotFit(f"header {name} is over SES's {MAX_HEADER_VALUE} characters")
        out.append({"Name": name, "Value": value})
    return out


def _address(address: Address) -> str:
    """`Name <addr>` as SES takes it: ASCII, names as RFC 2047 encoded-words."""
    if not address.email.rpartition("@")[0].isascii():
        raise _DoesNotFit(f"{address.email}: SES takes no non-ASCII local parts")
    email, needs_utf8 = ascii_domain(address.email)
    if needs_utf8:  # the local part is ASCII: the domain is what failed
        raise _DoesNotFit(f"{address.email}: domain cannot be written in ASCII")
    return formataddr((address.name or "", email))


def _host(url: str) -> str:
    parts = urlsplit(url)
    default = {"https": ":443", "http": ":80"}.get(parts.scheme, "")
    host = parts.netloc.rpartition("@")[2]
    return host.removesuffix(default) if default else host
