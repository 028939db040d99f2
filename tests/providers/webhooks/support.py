"""What the webhook tests of several providers share: auth headers, the fakes' outcomes."""

from __future__ import annotations

import base64

from mailgate.events.inbound import EventKind
from mailgate.message import Address


def basic(user: str, password: str) -> str:
    """An `Authorization: Basic` value for this pair."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


RECIPIENTS = {
    "to": (Address("bounce@example.org"), Address("softbounce@example.org")),
    "cc": (Address("complaint@example.org"), Address("open@example.org")),
    "bcc": (Address("unsubscribe@example.org"), Address("defer@example.org")),
}
"""One address for each ending the fakes simulate (`providers.fakes.base.outcomes`)."""
EVERY = [a.email for a in (*RECIPIENTS["to"], *RECIPIENTS["cc"], *RECIPIENTS["bcc"])]
EXPECTED = [
    (EventKind.BOUNCED, "bounce@example.org", "hard"),
    (EventKind.DEFERRED, "softbounce@example.org", None),
    (EventKind.BOUNCED, "softbounce@example.org", "soft"),
    (EventKind.DELIVERED, "complaint@example.org", None),
    (EventKind.COMPLAINED, "complaint@example.org", None),
    (EventKind.DELIVERED, "open@example.org", None),
    (EventKind.OPENED, "open@example.org", None),
    (EventKind.CLICKED, "open@example.org", None),
    (EventKind.DELIVERED, "unsubscribe@example.org", None),
    (EventKind.UNSUBSCRIBED, "unsubscribe@example.org", None),
    (EventKind.DEFERRED, "defer@example.org", None),
    (EventKind.DELIVERED, "defer@example.org", None),
]
"""(kind, recipient, bounce) of the events those addresses bring, in order."""
HTML = '<p><a href="https://example.com/welcome">start</a></p>'
