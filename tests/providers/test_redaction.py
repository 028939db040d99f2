"""What a provider answers is cleaned of our credentials before anything keeps it."""

from __future__ import annotations

import base64

from mailgate.config import MailgunSettings, MailjetSettings, SendGridSettings
from mailgate.providers.base import REDACTED, redacted, secret_forms
from mailgate.store.engine import shown_url


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def test_every_form_of_a_credential_is_redacted() -> None:
    mailgun = MailgunSettings(
        name="m", type="mailgun", api_key="key-0123456789", domain="mg.example.com"
    )
    mailjet = MailjetSettings(name="j", type="mailjet", api_key="pub-abc", api_secret="priv-xyz")
    for settings, leaks in (
        (mailgun, [b"key-0123456789", b64("key-0123456789"), b64("api:key-0123456789")]),
        (mailjet, [b"priv-xyz", b"pub-abc", b64("pub-abc:priv-xyz")]),
    ):
        forms = secret_forms(settings)
        for leak in leaks:
            body = redacted(b'{"message": "bad auth: ' + leak + b'"}', forms)
            assert leak not in body and REDACTED in body


def test_answers_without_credentials_are_untouched() -> None:
    forms = secret_forms(SendGridSettings(name="s", type="sendgrid", api_key="SG.abcdef"))
    body = b'{"errors": [{"message": "The from address does not match"}]}'
    assert redacted(body, forms) is body


def test_a_database_url_is_shown_without_its_password() -> None:
    shown = shown_url("postgresql://mailgate:S3cretPW0rd@db.internal:5432/mail")
    assert "S3cretPW0rd" not in shown and shown.startswith("postgresql://mailgate:***@db")
    assert shown_url("sqlite:///.mailgate/mailgate.db") == "sqlite:///.mailgate/mailgate.db"
