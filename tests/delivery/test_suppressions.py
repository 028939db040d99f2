"""Suppressed recipients are dropped before the send; nobody left means `failed`, no call."""

from __future__ import annotations

from mailgate.message import Address
from tests.delivery.conftest import Run


async def test_a_suppressed_address_gets_no_mail_until_removed(run: Run) -> None:
    h = await run()
    await h.store.add_suppression("default", "x@example.org")
    message_id = await h.send(to=(Address("X@example.org"),))
    view = await h.wait(message_id)
    assert view.status == "failed"
    assert view.last_error is not None and view.last_error.startswith("suppressed")
    assert [e.type for e in view.events] == ["accepted", "suppressed", "failed"]
    assert view.events[-1].detail["code"] == "suppressed"
    assert [(r.email, r.status) for r in view.recipients] == [("x@example.org", "suppressed")]
    assert h.fakes.total() == 0  # no provider was called
    assert h.metric("mailgate_messages_failed_total", outcome="suppressed") == 1

    await h.store.remove_suppression("default", "x@example.org")
    view = await h.wait(await h.send(to=(Address("x@example.org"),)))
    assert view.status == "sent" and h.fakes.total() == 1


async def test_only_the_suppressed_recipients_are_dropped(run: Run) -> None:
    h = await run()
    await h.store.add_suppression("default", "gone@example.org")
    message_id = await h.send(to=(Address("gone@example.org"),), cc=(Address("kept@example.org"),))
    view = await h.wait(message_id)
    assert view.status == "sent"
    [received] = h.fakes.sendgrid.received
    personalization = received.fields["personalizations"][0]
    assert personalization["to"] == [{"email": "kept@example.org"}]  # cc took the empty to
    assert "cc" not in personalization
    assert {r.email: r.status for r in view.recipients} == {
        "gone@example.org": "suppressed",
        "kept@example.org": "sent",
    }


async def test_suppressions_are_per_tenant(run: Run) -> None:
    h = await run()
    await h.store.add_suppression("some-other-tenant", "x@example.org")
    view = await h.wait(await h.send(to=(Address("x@example.org"),)))
    assert view.status == "sent"
