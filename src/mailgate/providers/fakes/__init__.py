"""Local servers speaking each provider's real wire format (tests, drills, simulation)."""

from mailgate.providers.fakes.base import Behaviour, FakeProvider, Received
from mailgate.providers.fakes.mailgun import FakeMailgun
from mailgate.providers.fakes.sendgrid import FakeSendGrid

__all__ = ["Behaviour", "FakeMailgun", "FakeProvider", "FakeSendGrid", "Received"]
