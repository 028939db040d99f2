"""Local servers speaking each provider's real wire format (tests, drills, simulation)."""

from mailgate.providers.fakes.base import Behaviour, FakeProvider, Received
from mailgate.providers.fakes.brevo import FakeBrevo
from mailgate.providers.fakes.mailgun import FakeMailgun
from mailgate.providers.fakes.mailjet import FakeMailjet
from mailgate.providers.fakes.mandrill import FakeMandrill
from mailgate.providers.fakes.postmark import FakePostmark
from mailgate.providers.fakes.resend import FakeResend
from mailgate.providers.fakes.sendgrid import FakeSendGrid
from mailgate.providers.fakes.ses import FakeSes
from mailgate.providers.fakes.smtp import FakeSmtp
from mailgate.providers.fakes.sparkpost import FakeSparkPost

__all__ = [
    "Behaviour",
    "FakeBrevo",
    "FakeMailgun",
    "FakeMailjet",
    "FakeMandrill",
    "FakePostmark",
    "FakeProvider",
    "FakeResend",
    "FakeSendGrid",
    "FakeSes",
    "FakeSmtp",
    "FakeSparkPost",
    "Received",
]
