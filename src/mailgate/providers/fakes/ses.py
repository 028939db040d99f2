"""A local Amazon SES v2 SendEmail: `POST /v2/email/outbound-emails`, SigV4, rest-json.

Checks the SigV4 signature for real: it recomputes it from the key pair it
knows with the signer the adapter uses, over the headers the request says
it signed and the exact body bytes. Errors are rest-json as AWS sends them
and botocore reads them: the code in `x-amzn-ErrorType` (with its `:<uri>`
suffix), `{"message": ...}` in the body, `x-amzn-RequestId`. Front-door
failures use the codes AWS's JSON services answer with: an unknown key id
is `UnrecognizedClientException`, a wrong signature or a date more than
15 minutes off is `InvalidSignatureException` (403).

`Behaviour.error` is an SES error code (`MessageRejected`), optionally with
the message to send after `": "` (`"LimitExceededException: Daily message
quota exceeded."`). `verified`, when given, makes the fake a sandbox account
that only sends from and to those addresses; `sending_enabled = False`, an
account whose sending is paused. `GET /v2/email/account` (GetAccount) is
there for the adapter's health probe.

With `webhook_url` set, each taken message's events are posted as SNS posts
what a configuration set publishes: a `Notification` envelope for the
topic `sns_topic_arn` whose `Message` is the SES event JSON (`Delivery`,
`Bounce`, `Complaint`, `DeliveryDelay`, `Open`, `Click`, `Subscription`),
signed the SNS way (`SignatureVersion` `signature_version`, "1" =
SHA1withRSA, "2" = SHA256withRSA) with an RSA key whose self-signed
certificate (`certificate_pem`) is "served" at `certificate_url`, an
`https://sns.<region>.amazonaws.com/SimpleNotificationService-<hex>.pem`
URL. Nothing serves it: a verifier is handed the PEM for that URL (AWS is
out of reach here). `subscription_confirmation()` is the post SNS makes
when the HTTPS subscription is created.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from email.utils import getaddresses
from typing import Any
from urllib.parse import urlencode

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mailgate.providers.fakes.base import FakeProvider, Outcome, SignedPost
from mailgate.providers.ses import (
    ACCOUNT_PATH,
    AMZ_DATE_FORMAT,
    MAILGATE_ID_TAG,
    SEND_PATH,
    decode_tag,
    sign,
)

MAX_SKEW = timedelta(minutes=15)
MAX_BYTES = 40 * 1024 * 1024
MAX_RECIPIENTS = 50
MAX_HEADERS = 15
MAX_TAGS = 50

_SERVICE_URI = "http://internal.amazon.com/coral/com.amazonaws.sesv2/"
_FRONT_DOOR_URI = "http://internal.amazon.com/coral/com.amazon.coral.service/"
_FRONT_DOOR = {
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "IncompleteSignatureException",
    "MissingAuthenticationTokenException",
    "AccessDeniedException",
}
_CODES_BY_STATUS = {
    400: "BadRequestException",
    403: "AccessDeniedException",
    404: "NotFoundException",
    429: "TooManyRequestsException",
    500: "InternalFailure",
    503: "ServiceUnavailable",
}
_MESSAGES = {
    "BadRequestException": "Missing final '@domain'",
    "MessageRejected": "Illegal address",
    "AccessDeniedException": "User: arn:aws:iam::123456789012:user/mailgate is not authorized "
    "to perform: ses:SendEmail",
    "AccountSuspendedException": "Your account's ability to send email has been suspended.",
    "SendingPausedException": "Sending is paused for this account.",
    "MailFromDomainNotVerifiedException": "The MAIL FROM domain is not verified.",
    "LimitExceededException": "Maximum sending rate exceeded.",
    "ThrottlingException": "Maximum sending rate exceeded.",
    "TooManyRequestsException": "Too Many Requests",
    "NotFoundException": "Resource not found.",
    "InternalFailure": "The request processing has failed because of an unknown error, "
    "exception or failure.",
    "ServiceUnavailable": "Service is unable to handle request.",
    "RequestExpired": "Request has expired.",
}
_BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/\s]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[a-z0-9;-]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)
_HEADER_NAME = re.compile(r"^[!-9;-~]{1,126}$")
_HEADER_VALUE = re.compile(r"^[ -~]{1,995}$")
_TAG = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def error(status: int, code: str | None = None, message: str | None = None) -> Response:
    """An SES rest-json error; without a code, a bare proxy page (502, 504)."""
    request_id = str(uuid.uuid4())
    if code is None:
        return PlainTextResponse(
            f"{status} error", status_code=status, headers={"x-amzn-RequestId": request_id}
        )
    uri = _FRONT_DOOR_URI if code in _FRONT_DOOR else _SERVICE_URI
    return JSONResponse(
        {"message": message or _MESSAGES.get(code, code)},
        status_code=status,
        headers={"x-amzn-ErrorType": f"{code}:{uri}", "x-amzn-RequestId": request_id},
    )


SNS_ACCOUNT = "123456789012"
SNS_TOPIC = "mailgate-ses-events"
_SNS_SIGNED = {
    # What SNS signs, in order (AWS, "Verifying the signatures of Amazon SNS messages").
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ),
}  # fmt: skip
_SES_EVENTS = {
    "delivered": "Delivery",
    "deferred": "DeliveryDelay",
    "bounced": "Bounce",
    "complained": "Complaint",
    "opened": "Open",
    "clicked": "Click",
    "unsubscribed": "Subscription",
}


def _iso(when: float) -> str:
    """A time as SNS and SES write it: `2024-05-01T10:00:00.123Z`."""
    stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class FakeSes(FakeProvider):
    def __init__(
        self,
        access_key_id: str,
        secret_access_key: str,
        *,
        region: str = "us-east-1",
        session_token: str | None = None,
        configuration_sets: Iterable[str] = (),
        verified: Iterable[str] | None = None,
        keep: int | None = None,
        sns_topic_arn: str | None = None,
        signature_version: str = "1",
    ) -> None:
        super().__init__(keep=keep)
        self.sns_topic_arn = sns_topic_arn or f"arn:aws:sns:{region}:{SNS_ACCOUNT}:{SNS_TOPIC}"
        """The topic the events are published to (mailgate's `webhook_sns_topic_arn`)."""
        self.signature_version = signature_version
        """"1" (SHA1withRSA, SNS's default) or "2" (SHA256withRSA)."""
        self.certificate_url = (
            f"https://sns.{region}.amazonaws.com/"
            f"SimpleNotificationService-{secrets.token_hex(16)}.pem"
        )
        self._signing_key: rsa.RSAPrivateKey | None = None
        self._certificate_pem: bytes | None = None
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.region = region
        self.session_token = session_token
        self.configuration_sets = set(configuration_sets)
        self.verified = None if verified is None else {a.lower() for a in verified}
        self.sending_enabled = True
        """False: the account's sending is paused (GetAccount says so, sends are refused)."""

    def routes(self) -> list[Route]:
        return [
            Route(SEND_PATH, self._send, methods=["POST"]),
            Route(ACCOUNT_PATH, self._account, methods=["GET"]),
        ]

    @property
    def certificate_pem(self) -> bytes:
        """The self-signed certificate of the SNS signing key (made on first use: RSA is slow)."""
        self._key()
        assert self._certificate_pem is not None
        return self._certificate_pem

    def _key(self) -> rsa.RSAPrivateKey:
        if self._signing_key is None:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
            now = datetime.now(UTC)
            certificate = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(days=1))
                .not_valid_after(now + timedelta(days=365))
                .sign(key, hashes.SHA256())
            )
            self._certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
            self._signing_key = key
        return self._signing_key

    def sns_post(
        self,
        kind: str,
        message: str,
        *,
        subject: str | None = None,
        token: str | None = None,
        at: float | None = None,
    ) -> SignedPost:
        """One signed SNS post of `kind` (`Notification`, `SubscriptionConfirmation`, ...)."""
        message_id = str(uuid.uuid4())
        envelope: dict[str, str] = {"Type": kind, "MessageId": message_id}
        if kind != "Notification":
            token = token or secrets.token_hex(64)
            query = urlencode(
                {"Action": "ConfirmSubscription", "TopicArn": self.sns_topic_arn, "Token": token}
            )
            envelope["Token"] = token
            envelope["SubscribeURL"] = f"https://sns.{self.region}.amazonaws.com/?{query}"
        envelope["TopicArn"] = self.sns_topic_arn
        if subject is not None:
            envelope["Subject"] = subject
        envelope["Message"] = message
        envelope["Timestamp"] = _iso(time.time() if at is None else at)
        text = "".join(f"{k}\n{envelope[k]}\n" for k in _SNS_SIGNED[kind] if k in envelope)
        algorithm = hashes.SHA1() if self.signature_version == "1" else hashes.SHA256()
        signature = self._key().sign(text.encode(), padding.PKCS1v15(), algorithm)
        envelope["SignatureVersion"] = self.signature_version
        envelope["Signature"] = base64.b64encode(signature).decode()
        envelope["SigningCertURL"] = self.certificate_url
        if kind == "Notification":
            subscription = f"{self.sns_topic_arn}:{uuid.uuid4()}"
            envelope["UnsubscribeURL"] = f"https://sns.{self.region}.amazonaws.com/?" + urlencode(
                {"Action": "Unsubscribe", "SubscriptionArn": subscription}
            )
        headers = {
            "content-type": "text/plain; charset=UTF-8",
            "user-agent": "Amazon Simple Notification Service Agent",
            "x-amz-sns-message-type": kind,
            "x-amz-sns-message-id": message_id,
            "x-amz-sns-topic-arn": self.sns_topic_arn,
        }
        if kind == "Notification":
            headers["x-amz-sns-subscription-arn"] = f"{self.sns_topic_arn}:{uuid.uuid4()}"
        return SignedPost(headers=headers, body=json.dumps(envelope).encode())

    def subscription_confirmation(self) -> SignedPost:
        """What SNS posts when the HTTPS subscription is created: GET its SubscribeURL."""
        message = (
            f"You have chosen to subscribe to the topic {self.sns_topic_arn}.\n"
            "To confirm the subscription, visit the SubscribeURL included in this message."
        )
        return self.sns_post("SubscriptionConfirmation", message)

    def signed_posts(self, happened: list[Outcome]) -> list[SignedPost]:
        """One SNS notification per outcome, its `Message` the SES event."""
        return [
            self.sns_post("Notification", json.dumps(self.ses_event(o), separators=(",", ":")))
            for o in happened
        ]

    def ses_event(self, outcome: Outcome) -> dict[str, Any]:
        """The SES event JSON (event publishing format) of one outcome."""
        fields = outcome.received.fields
        destination = fields.get("Destination") or {}
        recipients = [
            address
            for part in ("ToAddresses", "CcAddresses", "BccAddresses")
            for _, address in getaddresses(destination.get(part) or [])
        ]
        simple = (fields.get("Content") or {}).get("Simple") or {}
        sender = getaddresses([str(fields.get("FromEmailAddress") or "")])[0][1]
        tags: dict[str, list[str]] = {
            "ses:operation": ["SendEmail"],
            "ses:source-ip": ["192.0.2.10"],
            "ses:from-domain": [sender.rpartition("@")[2]],
            "ses:caller-identity": ["mailgate"],
        }
        if fields.get("ConfigurationSetName"):
            tags["ses:configuration-set"] = [fields["ConfigurationSetName"]]
        for tag in fields.get("EmailTags") or []:
            tags[tag["Name"]] = [tag["Value"]]
        headers = [{"name": h["Name"], "value": h["Value"]} for h in simple.get("Headers") or []]
        mail = {
            "timestamp": _iso(outcome.received.at),
            "source": fields.get("FromEmailAddress"),
            "sendingAccountId": SNS_ACCOUNT,
            "messageId": outcome.received.provider_message_id,
            "destination": recipients,
            "headersTruncated": False,
            "headers": headers,
            "commonHeaders": {
                "from": [fields.get("FromEmailAddress")],
                "to": destination.get("ToAddresses") or [],
                "messageId": outcome.received.provider_message_id,
                "subject": (simple.get("Subject") or {}).get("Data"),
            },
            "tags": tags,
        }
        now = _iso(time.time())
        event_type = _SES_EVENTS[outcome.kind]
        event: dict[str, Any] = {"eventType": event_type, "mail": mail}
        recipient = outcome.recipient
        domain = recipient.rpartition("@")[2]
        match outcome.kind:
            case "delivered":
                event["delivery"] = {
                    "timestamp": now,
                    "processingTimeMillis": 546,
                    "recipients": [recipient],
                    "smtpResponse": "250 2.6.0 Message received",
                    "reportingMTA": "a8-70.smtp-out.amazonses.com",
                }
            case "deferred":
                event["deliveryDelay"] = {
                    "timestamp": now,
                    "delayType": "TransientCommunicationFailure",
                    "expirationTime": _iso(time.time() + 86400),
                    "delayedRecipients": [
                        {
                            "emailAddress": recipient,
                            "status": "4.4.1",
                            "diagnosticCode": "smtp; 421 4.4.1 Try again later",
                        }
                    ],
                }
            case "bounced":
                hard = outcome.bounce != "soft"
                event["bounce"] = {
                    "timestamp": now,
                    "feedbackId": f"{uuid.uuid4()}-000000",
                    "bounceType": "Permanent" if hard else "Transient",
                    "bounceSubType": "General",
                    "reportingMTA": "dsn; a8-70.smtp-out.amazonses.com",
                    "bouncedRecipients": [
                        {
                            "emailAddress": recipient,
                            "action": "failed",
                            "status": "5.1.1" if hard else "4.2.2",
                            "diagnosticCode": "smtp; 550 5.1.1 user unknown"
                            if hard
                            else "smtp; 452 4.2.2 mailbox full",
                        }
                    ],
                }
            case "complained":
                event["complaint"] = {
                    "timestamp": now,
                    "feedbackId": f"{uuid.uuid4()}-000000",
                    "complaintSubType": None,
                    "complaintFeedbackType": "abuse",
                    "userAgent": f"{domain} feedback loop",
                    "complainedRecipients": [{"emailAddress": recipient}],
                }
            case "opened":
                event["open"] = {
                    "timestamp": now,
                    "ipAddress": "198.51.100.7",
                    "userAgent": "Mozilla/5.0 (fake mailbox)",
                }
            case "clicked":
                event["click"] = {
                    "timestamp": now,
                    "ipAddress": "198.51.100.7",
                    "userAgent": "Mozilla/5.0 (fake mailbox)",
                    "link": "https://example.com/welcome",
                    "linkTags": {},
                }
            case _:
                event["subscription"] = {
                    "contactList": "mailgate",
                    "timestamp": now,
                    "source": "UnsubscribeFooterLink",
                    "newTopicPreferences": {"unsubscribeAll": True, "topicSubscriptionStatus": []},
                    "oldTopicPreferences": {"unsubscribeAll": False, "topicSubscriptionStatus": []},
                }
        return event

    async def _account(self, request: Request) -> Response:
        """GetAccount, the adapter's health probe."""
        refused = self._check_signature(request, await request.body())
        if refused is not None:
            return refused
        failure = await self.misbehave(request, self._misbehaviour)
        return failure or JSONResponse(
            {
                "DedicatedIpAutoWarmupEnabled": False,
                "EnforcementStatus": "HEALTHY" if self.sending_enabled else "SHUTDOWN",
                "ProductionAccessEnabled": self.verified is None,
                "SendQuota": {
                    "Max24HourSend": 50000.0,
                    "MaxSendRate": 14.0,
                    "SentLast24Hours": float(self.taken),
                },
                "SendingEnabled": self.sending_enabled,
            },
            headers={"x-amzn-RequestId": str(uuid.uuid4())},
        )

    def _misbehaviour(self, status: int) -> Response:
        code, _, message = (self.behaviour.error or "").partition(": ")
        return error(status, code or _CODES_BY_STATUS.get(status), message or None)

    async def _send(self, request: Request) -> Response:
        self.requests += 1
        raw = await request.body()
        refused = self._check_signature(request, raw)
        if refused is not None:
            return refused
        failure = await self.misbehave(request, self._misbehaviour)
        if failure is not None:
            return failure
        if not self.sending_enabled:
            return error(400, "SendingPausedException")
        if len(raw) > MAX_BYTES:
            return error(400, "MessageRejected", "Message length is more than 40 MB.")
        try:
            body = json.loads(raw)
        except ValueError:
            return error(400, "BadRequestException", "Could not parse the request body.")
        problem = self._validate(body)
        if problem is not None:
            return problem
        message_id = f"{time.time_ns() // 1_000_000:016x}-{uuid.uuid4()}-000000"
        tags = {t["Name"]: t["Value"] for t in body.get("EmailTags") or []}
        mailgate_id = tags.get(MAILGATE_ID_TAG)
        destination = body.get("Destination") or {}
        recipients = [
            address
            for part in ("ToAddresses", "CcAddresses", "BccAddresses")
            for _, address in getaddresses(destination.get(part) or [])
        ]
        self.record(
            message_id,
            decode_tag(mailgate_id) if mailgate_id else None,
            body,
            recipients=recipients,
        )
        return JSONResponse(
            {"MessageId": message_id}, headers={"x-amzn-RequestId": str(uuid.uuid4())}
        )

    def _check_signature(self, request: Request, raw: bytes) -> Response | None:
        """Recompute the SigV4 signature; the refusal AWS would send, or None."""
        authorization = request.headers.get("authorization")
        if authorization is None:
            return error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        match = _AUTHORIZATION.match(authorization)
        signed = match["signed"].split(";") if match else []
        if match is None or "host" not in signed or "x-amz-date" not in signed:
            return error(
                403,
                "IncompleteSignatureException",
                "Authorization header requires Credential, SignedHeaders (with host and "
                "x-amz-date) and Signature.",
            )
        if match["key"] != self.access_key_id:
            return _invalid_token()
        if (match["region"], match["service"]) != (self.region, "ses"):
            return error(
                403,
                "InvalidSignatureException",
                f"Credential should be scoped to a valid region and to service 'ses', "
                f"not {match['region']}/{match['service']}.",
            )
        stamp = request.headers.get("x-amz-date", "")
        try:
            when = datetime.strptime(stamp, AMZ_DATE_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            return error(403, "IncompleteSignatureException", f"Invalid X-Amz-Date: {stamp!r}")
        refused = _check_clock(when, match["date"])
        if refused is not None:
            return refused
        if request.headers.get("x-amz-security-token") != self.session_token:
            return _invalid_token()
        headers = [(name, value) for name in signed for value in request.headers.getlist(name)]
        expected = sign(
            request.method,
            f"http://{request.headers.get('host', '')}{request.url.path}",
            headers,
            raw,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            region=self.region,
            now=when,
        )["Authorization"]
        if expected.rpartition("Signature=")[2] != match["signature"]:
            return error(403, "InvalidSignatureException", _BAD_SIGNATURE)
        return None

    def _validate(self, body: Any) -> Response | None:
        """The first refusal SES would send for this SendEmail body, or None."""
        if not isinstance(body, dict):
            return error(400, "BadRequestException", "The request body must be an object.")
        name = body.get("ConfigurationSetName")
        if name is not None and name not in self.configuration_sets:
            return error(404, "NotFoundException", f"Configuration set <{name}> does not exist.")
        simple = (body.get("Content") or {}).get("Simple")
        if not isinstance(simple, dict):
            return error(400, "BadRequestException", "Content.Simple is required by this fake.")
        sender = body.get("FromEmailAddress")
        destination = body.get("Destination") or {}
        recipients = [
            *destination.get("ToAddresses", []),
            *destination.get("CcAddresses", []),
            *destination.get("BccAddresses", []),
        ]
        if not sender or not recipients:
            return error(
                400, "BadRequestException", "FromEmailAddress and a recipient are required."
            )
        if len(recipients) > MAX_RECIPIENTS:
            return error(400, "BadRequestException", "Recipient count exceeds 50.")
        addresses = [sender, *recipients, *body.get("ReplyToAddresses", [])]
        for value in addresses:
            if not value.isascii():
                return error(400, "BadRequestException", f"Non-ASCII characters in {value!r}.")
            if "@" not in getaddresses([value])[0][1]:
                return error(400, "BadRequestException", "Missing final '@domain'")
        if self.verified is not None:
            unverified = [
                a for _, a in getaddresses([sender, *recipients]) if a.lower() not in self.verified
            ]
            if unverified:
                return error(
                    400,
                    "MessageRejected",
                    "Email address is not verified. The following identities failed the check "
                    f"in region {self.region.upper()}: {', '.join(unverified)}",
                )
        return _validate_simple(simple) or _validate_tags(body.get("EmailTags") or [])


def _invalid_token() -> Response:
    """An unknown access key id or session token."""
    return error(
        403, "UnrecognizedClientException", "The security token included in the request is invalid."
    )


def _check_clock(when: datetime, scope_date: str) -> Response | None:
    now = datetime.now(UTC)
    fmt = AMZ_DATE_FORMAT
    if when < now - MAX_SKEW:
        return error(
            403,
            "InvalidSignatureException",
            f"Signature expired: {when:{fmt}} is now earlier than {now - MAX_SKEW:{fmt}} "
            f"({now:{fmt}} - 15 min.)",
        )
    if when > now + MAX_SKEW:
        return error(
            403,
            "InvalidSignatureException",
            f"Signature not yet current: {when:{fmt}} is still later than "
            f"{now + MAX_SKEW:{fmt}} ({now:{fmt}} + 15 min.)",
        )
    if scope_date != f"{when:%Y%m%d}":
        return error(403, "InvalidSignatureException", "Date in Credential scope does not match")
    return None


def _validate_simple(simple: dict[str, Any]) -> Response | None:
    if not (simple.get("Subject") or {}).get("Data"):
        return error(400, "BadRequestException", "Subject is required.")
    body = simple.get("Body") or {}
    if not body.get("Text") and not body.get("Html"):
        return error(400, "BadRequestException", "Body must have Text or Html.")
    headers = simple.get("Headers") or []
    if len(headers) > MAX_HEADERS:
        return error(400, "BadRequestException", "Headers can contain no more than 15 headers.")
    for header in headers:
        name, value = header.get("Name", ""), header.get("Value", "")
        if not _HEADER_NAME.match(name) or not _HEADER_VALUE.match(value):
            return error(400, "BadRequestException", f"Invalid header {name!r}.")
        if len(name) + len(value) > 996:
            return error(400, "BadRequestException", f"Header {name!r} is too long.")
    for attachment in simple.get("Attachments") or []:
        if not attachment.get("FileName"):
            return error(400, "BadRequestException", "Attachment FileName is required.")
        try:
            base64.b64decode(attachment.get("RawContent") or "", validate=True)
        except (binascii.Error, ValueError):
            return error(400, "BadRequestException", "Attachment RawContent is not base64.")
    return None


def _validate_tags(tags: list[dict[str, str]]) -> Response | None:
    if len(tags) > MAX_TAGS:
        return error(400, "BadRequestException", "Too many message tags.")
    for tag in tags:
        for part in ("Name", "Value"):
            if not _TAG.match(tag.get(part) or ""):
                return error(
                    400,
                    "BadRequestException",
                    f"Invalid tag {part.lower()} {tag.get(part)!r}: only alphanumeric ASCII "
                    "characters, '_', and '-' are allowed.",
                )
    return None
