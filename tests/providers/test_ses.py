"""Amazon SES v2's own quirks: SigV4, what SES cannot carry, and its error codes."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from mailgate.config import SesSettings
from mailgate.errors import (
    MessageRejected,
    ProviderAuthError,
    ProviderError,
    ProviderThrottled,
    ProviderUnavailable,
)
from mailgate.message import Address, Email
from mailgate.providers import HttpResponse
from mailgate.providers.ses import (
    DAILY_QUOTA_PAUSE,
    SesProvider,
    decode_tag,
    encode_tag,
    sign,
)
from tests.providers.cases.ses import SES_KEY_ID, SES_SECRET, SesCase, open_case
from tests.providers.support import EMAIL, TIMEOUT, email

TAG_ALPHABET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")

# --- AWS Signature Version 4: the published test suite ------------------------
# From AWS's aws-sig-v4-test-suite (the 2015 edition every SDK carries): each
# case's request and the Authorization header AWS publishes for it.

SUITE_KEY_ID = "AKIDEXAMPLE"
SUITE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SUITE_DATE = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)
SUITE_TOKEN = (
    "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIe"
    "oIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0w"
    "q5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypN"
    "C9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA=="
)
HOST = ("Host", "example.amazonaws.com")

SUITE: list[tuple[str, str, str, list[tuple[str, str]], bytes, str | None, str, str]] = [
    # name, method, path, headers, body, session token, signed headers, signature
    (
        "get-vanilla", "GET", "/", [HOST], b"", None, "host;x-amz-date",
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
    ),
    (
        "get-vanilla-query-order-key-case", "GET", "/?Param2=value2&Param1=value1", [HOST], b"",
        None, "host;x-amz-date",
        "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
    ),
    (
        "get-header-key-duplicate", "GET", "/",
        [HOST, ("My-Header1", "value2"), ("My-Header1", "value2"), ("My-Header1", "value1")],
        b"", None, "host;my-header1;x-amz-date",
        "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
    ),
    (
        "get-header-value-trim", "GET", "/",
        [HOST, ("My-Header1", " value1"), ("My-Header2", ' "a   b   c"')],
        b"", None, "host;my-header1;my-header2;x-amz-date",
        "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
    ),
    (
        "get-utf8", "GET", "/ሴ", [HOST], b"", None, "host;x-amz-date",
        "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
    ),
    (
        "post-vanilla", "POST", "/", [HOST], b"", None, "host;x-amz-date",
        "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
    ),
    (
        "post-header-key-sort", "POST", "/", [HOST, ("My-Header1", "value1")], b"", None,
        "host;my-header1;x-amz-date",
        "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c",
    ),
    (
        "post-sts-header-before", "POST", "/", [HOST], b"", SUITE_TOKEN,
        "host;x-amz-date;x-amz-security-token",
        "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead",
    ),
    (
        "post-x-www-form-urlencoded", "POST", "/",
        [("Content-Type", "application/x-www-form-urlencoded"), HOST], b"Param1=value1", None,
        "content-type;host;x-amz-date",
        "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "token", "signed", "signature"),
    [case[1:] for case in SUITE],
    ids=[case[0] for case in SUITE],
)
def test_the_signer_reproduces_aws_test_suite(
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes,
    token: str | None,
    signed: str,
    signature: str,
) -> None:
    added = sign(
        method,
        f"https://example.amazonaws.com{path}",
        headers,
        body,
        access_key_id=SUITE_KEY_ID,
        secret_access_key=SUITE_SECRET,
        session_token=token,
        region="us-east-1",
        service="service",
        now=SUITE_DATE,
    )
    assert added["X-Amz-Date"] == "20150830T123600Z"
    assert added.get("X-Amz-Security-Token") == token
    assert added["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        f"SignedHeaders={signed}, Signature={signature}"
    )


# --- the adapter against the fake ----------------------------------------------


@pytest.fixture
async def ses() -> AsyncIterator[SesCase]:
    async with open_case() as case:
        yield case


def adapter(case: SesCase, **overrides: Any) -> SesProvider:
    provider = case.make(base_url=case.url, timeout=TIMEOUT, good_credentials=True, **overrides)
    assert isinstance(provider, SesProvider)
    return provider


async def refused_before_sending(case: SesCase, message: Email) -> ProviderUnavailable:
    provider = adapter(case)
    with pytest.raises(ProviderUnavailable) as info:
        await provider.send("msg_1", message)
    await provider.close()
    assert case.requests() == 0  # decided here, nothing went to SES
    assert not info.value.ambiguous and "SES cannot take this message" in info.value.detail
    return info.value


async def test_the_id_is_the_message_id_of_the_response(ses: SesCase) -> None:
    provider = adapter(ses)
    result = await provider.send("msg_1", EMAIL)
    await provider.close()
    assert result.provider_message_id == ses.fake.received[0].provider_message_id
    assert re.fullmatch(r"[0-9a-f]{16}-[0-9a-f-]{36}-000000", result.provider_message_id or "")


def test_every_request_is_signed_when_it_is_built(ses: SesCase) -> None:
    start = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    times = iter([start, start + timedelta(seconds=1)])
    provider = adapter(ses, clock=lambda: next(times))
    first, second = (provider.build_request("msg_1", EMAIL).headers for _ in range(2))
    assert (first["X-Amz-Date"], second["X-Amz-Date"]) == ("20300102T030405Z", "20300102T030406Z")
    assert first["Authorization"] != second["Authorization"]
    scope = f"Credential={SES_KEY_ID}/20300102/us-east-1/ses/aws4_request, "
    assert scope in first["Authorization"]


@pytest.mark.parametrize("skew", [timedelta(minutes=-20), timedelta(minutes=20)])
async def test_a_clock_off_by_more_than_15_minutes_is_not_a_credentials_problem(
    ses: SesCase, skew: timedelta
) -> None:
    provider = adapter(ses, clock=lambda: datetime.now(UTC) + skew)
    with pytest.raises(ProviderUnavailable) as info:
        await provider.send("msg_1", EMAIL)
    await provider.close()
    assert not isinstance(info.value, ProviderAuthError) and not info.value.ambiguous
    assert "InvalidSignatureException: Signature " in info.value.detail
    assert ses.taken() == []


async def test_an_unknown_access_key_is_an_auth_error(ses: SesCase) -> None:
    provider = adapter(ses, access_key_id="AKIAUNKNOWN000000000")
    with pytest.raises(ProviderAuthError, match="UnrecognizedClientException"):
        await provider.send("msg_1", EMAIL)
    await provider.close()


@pytest.mark.parametrize("tamper", ["body", "header", "none"])
async def test_the_fake_checks_the_signature_over_body_and_headers(
    ses: SesCase, tamper: str
) -> None:
    request = adapter(ses).build_request("msg_1", EMAIL)
    headers = dict(request.headers)
    assert request.data is not None  # the exact bytes the adapter signed
    payload = json.loads(request.data)
    body = request.data
    if tamper == "body":
        body = json.dumps({**payload, "FromEmailAddress": "mallory@example.com"}).encode()
    if tamper == "header":
        headers["Content-Type"] = "application/json; charset=utf-8"
    async with httpx.AsyncClient() as client:
        response = await client.post(request.url, headers=headers, content=body)
    if tamper == "none":
        assert response.status_code == 200 and ses.taken()[0]["mailgate_id"] == "msg_1"
    else:
        assert response.status_code == 403 and ses.taken() == []
        assert response.headers["x-amzn-ErrorType"].startswith("InvalidSignatureException:")
        assert "does not match the signature you provided" in response.json()["message"]


async def test_the_health_probe_reads_the_account(ses: SesCase) -> None:
    good, bad = adapter(ses), ses.provider(good_credentials=False)
    await good.probe()
    with pytest.raises(ProviderAuthError, match="InvalidSignatureException"):
        await bad.probe()
    ses.fake.sending_enabled = False
    with pytest.raises(ProviderAuthError, match="SendingEnabled is false"):
        await good.probe()
    with pytest.raises(ProviderAuthError, match="SendingPausedException"):
        await good.send("msg_1", EMAIL)
    await good.close()
    await bad.close()
    assert ses.taken() == []


async def test_temporary_credentials_send_their_session_token() -> None:
    async with open_case(session_token="session-token-1") as case:
        provider = adapter(case, session_token="session-token-1")
        await provider.send("msg_1", EMAIL)
        assert provider.build_request("msg_2", EMAIL).headers["X-Amz-Security-Token"] == (
            "session-token-1"
        )
        without = adapter(case)
        with pytest.raises(ProviderAuthError, match="security token"):
            await without.send("msg_3", EMAIL)
        await provider.close()
        await without.close()
        assert [v["mailgate_id"] for v in case.taken()] == ["msg_1"]


async def test_non_ascii_names_and_headers_are_encoded_words_on_the_wire(ses: SesCase) -> None:
    provider = adapter(ses)
    message = email(
        sender=Address("a@example.com", "Zoë Müller"),
        reply_to=(Address("r@example.com", "Señor Ayuda"),),
        headers={"X-Note": "grüße\tand tabs", "X-Plain": "plain ASCII"},
    )
    await provider.send("msg_1", message)
    await provider.close()
    body = ses.fake.received[0].fields
    on_the_wire = [
        body["FromEmailAddress"],
        *body["ReplyToAddresses"],
        *(h["Value"] for h in body["Content"]["Simple"]["Headers"]),
    ]
    assert all(value.isascii() and value.isprintable() for value in on_the_wire)
    assert body["FromEmailAddress"].startswith("=?utf-8?")
    [view] = ses.taken()
    assert view["sender"] == {"email": "a@example.com", "name": "Zoë Müller"}
    assert view["reply_to"] == [{"email": "r@example.com", "name": "Señor Ayuda"}]
    assert view["headers"] == {"X-Note": "grüße\tand tabs", "X-Plain": "plain ASCII"}


async def test_an_internationalised_domain_goes_as_punycode(ses: SesCase) -> None:
    provider = adapter(ses)
    await provider.send("msg_1", email(to=(Address("b@bücher.example"),)))
    await provider.close()
    assert ses.fake.received[0].fields["Destination"]["ToAddresses"] == ["b@xn--bcher-kva.example"]


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("invoice", "invoice"),
        ("order-42_b", "order-42_b"),
        ("plan.pro", "_plan_2Epro"),
        ("Black Friday", "_Black_20Friday"),
        ("café", "_caf_C3_A9"),
        ("_private", "__5Fprivate"),
        ("", "_"),
    ],
)
def test_tag_text_is_escaped_into_ses_alphabet_and_back(text: str, wire: str) -> None:
    assert encode_tag(text) == wire
    assert decode_tag(wire) == text


def test_metadata_keys_cannot_pass_for_mailgates_own_tags() -> None:
    assert encode_tag("mailgate_tag_1", name=True) == "_mailgate_5Ftag_5F1"
    assert encode_tag("mailgate_tag_1") == "mailgate_tag_1"  # values are not names


async def test_tags_and_metadata_round_trip_whatever_their_characters(ses: SesCase) -> None:
    tags = ("Black Friday", "café", "plain-tag")
    metadata = {"order.id": "A/42?x=1", "mailgate_tag_1": "mine", "empty": "", "_k": "v"}
    provider = adapter(ses)
    await provider.send("msg_1", email(tags=tags, metadata=metadata))
    await provider.close()
    wire = ses.fake.received[0].fields["EmailTags"]
    assert all(TAG_ALPHABET.match(t["Name"]) and TAG_ALPHABET.match(t["Value"]) for t in wire)
    assert wire[:2] == [
        {"Name": "mailgate_id", "Value": "msg_1"},
        {"Name": "mailgate_tag_1", "Value": "_Black_20Friday"},
    ]
    [view] = ses.taken()
    assert (view["tags"], view["metadata"]) == (list(tags), metadata)


async def test_fourteen_custom_headers_fit(ses: SesCase) -> None:
    provider = adapter(ses)
    await provider.send("msg_1", email(headers={f"X-H{i}": "v" for i in range(14)}))
    await provider.close()
    assert len(ses.fake.received[0].fields["Content"]["Simple"]["Headers"]) == 15


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"headers": {f"X-H{i}": "v" for i in range(15)}}, "15 custom headers; SES takes 14"),
        ({"headers": {"X-Long": "é" * 400}}, "header X-Long is over"),
        ({"cc": tuple(Address(f"c{i}@example.org") for i in range(50))}, "51 recipients"),
        ({"metadata": {"k": "x" * 257}}, "message tag 'k' is over 256"),
        ({"metadata": {f"k{i}": "v" for i in range(50)}}, "51 message tags"),
        ({"to": (Address("müller@example.org"),)}, "no non-ASCII local parts"),
    ],
    ids=["headers", "header-length", "recipients", "tag-length", "tag-count", "local-part"],
)
async def test_what_ses_cannot_carry_fails_over_before_sending(
    ses: SesCase, fields: dict[str, Any], reason: str
) -> None:
    error = await refused_before_sending(ses, email(**fields))
    assert reason in error.detail


async def test_the_configuration_set_is_named_when_configured() -> None:
    async with open_case(configuration_sets=["tracking"]) as case:
        provider = adapter(case, configuration_set="tracking")
        await provider.send("msg_1", EMAIL)
        missing = adapter(case, configuration_set="nope")
        with pytest.raises(ProviderUnavailable) as info:
            await missing.send("msg_2", EMAIL)
        await provider.close()
        await missing.close()
    assert case.fake.received[0].fields["ConfigurationSetName"] == "tracking"
    unnamed = adapter(case).build_request("m", EMAIL).data
    assert unnamed is not None and "ConfigurationSetName" not in json.loads(unnamed)
    assert info.value.status_code == 404 and not info.value.ambiguous
    assert "NotFoundException: Configuration set <nope> does not exist." in info.value.detail


async def test_a_sandbox_not_verified_rejection_fails_over() -> None:
    async with open_case(verified=["a@example.com"]) as case:
        provider = adapter(case)
        with pytest.raises(ProviderAuthError) as info:
            await provider.send("msg_1", EMAIL)
        await provider.close()
    assert info.value.status_code == 400
    assert "MessageRejected: Email address is not verified" in info.value.detail
    assert "b@example.org" in info.value.detail


ERRORS: list[tuple[int, str | None, type[ProviderError], dict[str, Any]]] = [
    (400, "MessageRejected", MessageRejected, {}),
    (400, "BadRequestException", MessageRejected, {}),
    (429, "TooManyRequestsException", ProviderThrottled, {"retry_after": None}),
    (400, "ThrottlingException: Maximum sending rate exceeded.", ProviderThrottled,
     {"retry_after": None}),
    (400, "LimitExceededException: Daily message quota exceeded.", ProviderThrottled,
     {"retry_after": DAILY_QUOTA_PAUSE}),
    (400, "ThrottlingException: Daily message quota exceeded.", ProviderThrottled,
     {"retry_after": DAILY_QUOTA_PAUSE}),
    (400, "AccountSuspendedException", ProviderAuthError, {}),
    (400, "SendingPausedException", ProviderAuthError, {}),
    (400, "MailFromDomainNotVerifiedException", ProviderAuthError, {}),
    (403, "InvalidClientTokenId", ProviderAuthError, {}),
    (403, "SignatureDoesNotMatch", ProviderAuthError, {}),
    (403, "AccessDeniedException", ProviderAuthError, {}),
    (400, "RequestExpired", ProviderUnavailable, {"ambiguous": False}),
    (404, "NotFoundException", ProviderUnavailable, {"ambiguous": False}),
    (500, "InternalFailure", ProviderUnavailable, {"ambiguous": True}),
    (500, "InternalServiceErrorException", ProviderUnavailable, {"ambiguous": True}),
    (503, "ServiceUnavailable", ProviderUnavailable, {"ambiguous": False}),
    (502, None, ProviderUnavailable, {"ambiguous": False}),
]  # fmt: skip


@pytest.mark.parametrize(("status", "error", "kind", "attrs"), ERRORS)
async def test_ses_errors_map_onto_the_outcome_table(
    ses: SesCase,
    status: int,
    error: str | None,
    kind: type[ProviderError],
    attrs: dict[str, Any],
) -> None:
    ses.fake.behaviour.update({"status": status, "error": error})
    provider = adapter(ses)
    with pytest.raises(ProviderError) as info:
        await provider.send("msg_1", EMAIL)
    await provider.close()
    assert type(info.value) is kind, repr(info.value)
    assert {k: getattr(info.value, k) for k in attrs} == attrs
    assert info.value.status_code == status and info.value.detail


def test_error_codes_are_read_as_botocore_reads_them(ses: SesCase) -> None:
    provider = adapter(ses)
    header = HttpResponse(
        400,
        {
            "x-amzn-ErrorType": "MessageRejected:http://internal.amazon.com/coral/com.amazonaws.sesv2/",
            "x-amzn-RequestId": "req-1",
        },
        b'{"message": "Illegal address"}',
    )
    assert provider.describe_error(header) == "MessageRejected: Illegal address (request req-1)"
    typed = HttpResponse(
        403,
        {},
        b'{"__type": "com.amazon.coral.service#UnrecognizedClientException", '
        b'"message": "The security token included in the request is invalid."}',
    )
    error = provider.classify_error(typed)
    assert isinstance(error, ProviderAuthError)
    assert error.detail.startswith("UnrecognizedClientException: The security token")
    coded = HttpResponse(400, {}, b'{"Code": "BadRequestException", "Message": "bad"}')
    assert provider.describe_error(coded) == "BadRequestException: bad"
    assert provider.describe_error(HttpResponse(502, {}, b"<html>bad gateway</html>")) == (
        "<html>bad gateway</html>"
    )


def test_a_retry_after_is_honoured_if_one_ever_comes(ses: SesCase) -> None:
    response = HttpResponse(
        429, {"x-amzn-ErrorType": "TooManyRequestsException", "Retry-After": "7"}, b"{}"
    )
    error = adapter(ses).classify_error(response)
    assert isinstance(error, ProviderThrottled) and error.retry_after == 7.0


def test_a_200_without_a_message_id_is_not_a_send(ses: SesCase) -> None:
    with pytest.raises(ProviderUnavailable, match="without a MessageId"):
        adapter(ses).parse_success(HttpResponse(200, {}, b"<html>hello</html>"))


def test_the_default_endpoint_is_the_regions() -> None:
    settings = SesSettings(
        name="ses",
        type="ses",
        access_key_id=SES_KEY_ID,
        secret_access_key=SES_SECRET,
        region="eu-west-1",
    )
    provider = SesProvider(settings, timeout=TIMEOUT)
    assert provider.base_url == "https://email.eu-west-1.amazonaws.com"
    request = provider.build_request("msg_1", EMAIL)
    assert request.url == "https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails"
    assert request.headers["Host"] == "email.eu-west-1.amazonaws.com"
    assert "/eu-west-1/ses/aws4_request" in request.headers["Authorization"]


async def test_credentials_echoed_in_an_error_are_not_kept() -> None:
    """AWS answers a signature it cannot match with the canonical request it expected,
    session token included: only the first paragraph is kept, and the token nowhere."""
    token = "IQoJb3JpZ2luX2VjEXAMPLE-session-token"
    async with open_case(session_token=token) as ses:
        provider = adapter(ses, session_token=token)
        ses.fake.behaviour.update(
            {
                "status": 403,
                "error": "InvalidSignatureException: The request signature we calculated does "
                f"not match.\n\nThe Canonical String for this request should have been\n"
                f"'POST\nx-amz-security-token:{token}\n'",
            }
        )
        with pytest.raises(ProviderAuthError) as refused:
            await provider.send("msg_1", EMAIL)
        await provider.close()
    assert "does not match" in str(refused.value) and "Canonical" not in str(refused.value)
    assert token not in str(refused.value) and token not in refused.value.detail
