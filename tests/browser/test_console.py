"""The console, page by page, in Chromium against a running gateway."""

from __future__ import annotations

import base64
import re
import time
import uuid
from datetime import UTC, datetime, timedelta

from playwright.sync_api import Browser, BrowserContext, FilePayload, Page, expect

from tests.browser.conftest import Gateway, log_in


def _tenant(gateway: Gateway) -> str:
    body = {"name": f"t-{uuid.uuid4().hex[:10]}"}
    return str(gateway.call("POST", "/v1/tenants", json=body)["id"])


def _csrf(page: Page) -> str:
    """The session's CSRF token, as the page's own forms carry it."""
    return str(page.locator("input[name=csrf]").first.get_attribute("value"))


def test_log_in_and_out(gateway: Gateway, context: BrowserContext, page: Page) -> None:
    page.goto(f"{gateway.url}/")
    expect(page).to_have_url(re.compile(r"/ui/login\?next=/ui$"))
    page.get_by_label("API key").fill("mg_not-a-key")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#login-error")).to_contain_text("unknown or revoked")

    log_in(page, gateway)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    [cookie] = [c for c in context.cookies() if c["name"] == "mailgate_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert cookie["expires"] > 0  # it expires

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    # The old cookie, replayed, is dead: the session ended on the server.
    context.add_cookies([{"name": cookie["name"], "value": cookie["value"], "url": gateway.url}])
    page.goto(f"{gateway.url}/ui/messages")
    expect(page).to_have_url(re.compile(r"/ui/login\?next=/ui/messages$"))


def test_send_through_the_form_and_watch_it_arrive(gateway: Gateway, page: Page) -> None:
    log_in(page, gateway)
    page.get_by_role("link", name="Send", exact=True).click()
    page.get_by_label("From").fill("Shop <shop@example.com>")
    page.get_by_label("To", exact=False).first.fill("reader@example.org, other@example.org")
    page.get_by_label("Subject").fill("Your receipt")
    page.get_by_label("Text").fill("Thank you.")
    page.get_by_label("HTML").fill("<p>Thank you.</p>")
    page.get_by_label("Tags", exact=False).fill("receipts")
    receipt: FilePayload = {"name": "receipt.txt", "mimeType": "text/plain",
                            "buffer": b"total: 10 EUR"}  # fmt: skip
    page.get_by_label("Attachments").set_input_files([receipt])
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page).to_have_url(re.compile(r"/ui/messages/msg_[0-9A-Z]{26}$"))
    message_id = page.url.rsplit("/", 1)[1]
    page.evaluate("window.__same_page = true")
    expect(page.locator("#live")).to_have_attribute("data-streaming", "yes")
    # The simulated provider takes it, then posts `delivered` for both recipients.
    expect(page.locator("#status")).to_have_text("delivered", timeout=20_000)
    expect(page.locator("#timeline li[data-type=sent]")).to_have_count(1)
    expect(page.locator("#recipients")).to_contain_text("other@example.org")
    assert page.evaluate("window.__same_page") is True  # no reload
    stored = gateway.call("GET", f"/v1/messages/{message_id}")
    assert stored["subject"] == "Your receipt" and stored["tags"] == ["receipts"]
    [attachment] = gateway.stored_body(message_id)["attachments"]
    assert attachment["filename"] == "receipt.txt" and attachment["content_type"] == "text/plain"
    assert base64.b64decode(attachment["content"]) == b"total: 10 EUR"


def test_the_send_form_names_a_bad_field(gateway: Gateway, page: Page) -> None:
    log_in(page, gateway)
    page.goto(f"{gateway.url}/ui/send")
    page.get_by_label("To", exact=False).first.fill("not an address")
    page.get_by_label("Subject").fill("S")
    page.get_by_label("Text").fill("t")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.locator("#send-error")).to_contain_text("to")
    expect(page.get_by_label("Subject")).to_have_value("S")  # what was typed is kept


def test_filters_and_paging(gateway: Gateway, page: Page) -> None:
    tag = f"page-{uuid.uuid4().hex[:8]}"
    batch = [{"from": "shop@example.com", "to": [f"r{i}@example.org"], "subject": f"n{i}",
              "text": "t", "tags": [tag]} for i in range(30)]  # fmt: skip
    sent = gateway.call("POST", "/v1/messages/batch", json={"messages": batch})["data"]
    ids = {item["id"] for item in sent}
    gateway.send(tags=["elsewhere"])
    log_in(page, gateway)
    page.goto(f"{gateway.url}/ui/messages")
    page.get_by_label("Tag").fill(tag)
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(rf"tag={tag}"))
    rows = page.locator("#messages tbody tr")
    expect(rows).to_have_count(25)
    first = set(page.locator("#messages tbody tr td:first-child a").all_inner_texts())
    page.get_by_role("link", name="Older").click()
    expect(rows).to_have_count(5)
    rest = set(page.locator("#messages tbody tr td:first-child a").all_inner_texts())
    assert first | rest == ids and not first & rest
    expect(page.get_by_role("link", name="Older")).to_have_count(0)
    page.get_by_role("link", name="Newest").click()
    expect(rows).to_have_count(25)

    page.get_by_label("Recipient").fill("R7@example.org")
    page.get_by_role("button", name="Search").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("r7@example.org")
    page.goto(f"{gateway.url}/ui/messages?tag={tag}&status=cancelled")
    expect(page.locator("#no-messages")).to_be_visible()
    page.goto(f"{gateway.url}/ui/messages?status=lost")
    expect(page.get_by_role("alert")).to_contain_text("status")


def test_a_drill_from_the_providers_page_sends_through_the_backup(
    gateway: Gateway, page: Page
) -> None:
    log_in(page, gateway)
    page.get_by_role("link", name="Providers", exact=True).click()
    page.get_by_label("Drill").first.select_option("error")
    page.get_by_role("button", name="Set drill for sendgrid").click()
    try:
        expect(page.locator("tr[data-provider=sendgrid] .drill")).to_have_text("error")
        message_id = gateway.send()
        gateway.wait_status(message_id, "sent", "delivered")
        assert gateway.call("GET", f"/v1/messages/{message_id}")["provider"] == "mailgun"
        page.goto(f"{gateway.url}/ui/messages/{message_id}")
        expect(page.locator("#provider")).to_have_text("mailgun")
        expect(page.locator("#timeline li[data-type=failover]")).to_have_count(1)
        page.goto(f"{gateway.url}/ui/providers")
        expect(page.locator(".card").first).to_contain_text("drill")
    finally:
        gateway.call("POST", "/v1/providers/sendgrid/simulate-failure", json={"mode": "off"})


def test_bulk_retry_of_failed_mail(gateway: Gateway, page: Page) -> None:
    tenant = _tenant(gateway)
    key = gateway.key(["send", "read", "manage"], tenant)
    gone = "gone@example.org"
    gateway.call("POST", "/v1/suppressions", key, json={"email": gone})
    failed = [gateway.send(key, to=[gone], tags=["batch-a"]) for _ in range(3)]
    for message_id in failed:
        gateway.wait_status(message_id, "failed", key=key)
    gateway.call("DELETE", f"/v1/suppressions/{gone}", key)

    log_in(page, gateway, key)
    page.get_by_role("link", name="Failed mail", exact=True).click()
    expect(page.locator("#matched")).to_have_text("3 failed messages match.")
    page.get_by_label("Tag").fill("nothing-like-it")
    page.get_by_role("button", name="Count").click()
    expect(page.locator("#matched")).to_have_text("0 failed messages match.")
    page.get_by_label("Tag").fill("batch-a")
    page.get_by_role("button", name="Count").click()
    expect(page.locator("#matched")).to_have_text("3 failed messages match.")
    page.get_by_role("button", name="Retry all 3").click()
    expect(page.locator("#retried")).to_have_text("3 of 3 matching messages were queued again.")
    for message_id in failed:
        gateway.wait_status(message_id, "sent", "delivered", key=key)
    [record, *_] = gateway.call("GET", "/v1/audit")["data"]
    assert record["action"] == "messages.retry" and record["tenant_id"] == tenant
    assert record["detail"]["retried"] == 3 and record["detail"]["tag"] == "batch-a"


def test_a_read_key_sees_no_buttons_and_a_forged_post_is_refused(
    gateway: Gateway, page: Page
) -> None:
    message_id = gateway.send()
    key = gateway.key(["read"])
    log_in(page, gateway, key)
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Messages")).to_be_visible()
    for hidden in ("Send", "Failed mail", "Keys", "Tenants"):
        expect(nav.get_by_role("link", name=hidden)).to_have_count(0)
    page.goto(f"{gateway.url}/ui/providers")
    expect(page.get_by_role("button", name=re.compile("Disable|Set drill"))).to_have_count(0)
    page.goto(f"{gateway.url}/ui/messages/{message_id}")
    expect(page.locator("#status")).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("Cancel|Retry"))).to_have_count(0)
    page.goto(f"{gateway.url}/ui/suppressions")
    expect(page.get_by_role("button", name="Add")).to_have_count(0)

    csrf = _csrf(page)  # a valid session and token: only the scope is missing
    forged = page.request.post(
        f"{gateway.url}/ui/providers/sendgrid/disable", form={"csrf": csrf}, max_redirects=0
    )
    assert forged.status == 403 and "admin" in forged.text()
    forged = page.request.post(
        f"{gateway.url}/ui/suppressions", form={"csrf": csrf, "email": "x@example.org"}
    )
    assert forged.status == 403
    assert page.request.get(f"{gateway.url}/ui/send").status == 403
    assert gateway.call("GET", "/v1/providers/sendgrid")["enabled"] is True
    listed = gateway.call("GET", "/v1/suppressions", params={"email": "x@example.org"})
    assert listed["data"] == []


def test_a_post_without_the_csrf_token_is_refused(gateway: Gateway, page: Page) -> None:
    log_in(page, gateway)
    target = f"{gateway.url}/ui/providers/sendgrid/disable"
    assert page.request.post(target, form={}, max_redirects=0).status == 403
    wrong = page.request.post(target, form={"csrf": "x" * 43}, max_redirects=0)
    assert wrong.status == 403 and "CSRF" in wrong.text()
    assert gateway.call("GET", "/v1/providers/sendgrid")["enabled"] is True
    # With the page's own token the same request goes through (and is undone).
    done = page.request.post(target, form={"csrf": _csrf(page)}, max_redirects=0)
    assert done.status == 303
    assert gateway.call("GET", "/v1/providers/sendgrid")["enabled"] is False
    gateway.call("POST", "/v1/providers/sendgrid/enable")
    # Logging in needs the login form's own token too.
    login = page.request.post(f"{gateway.url}/ui/login", form={"key": gateway.admin_key})
    assert login.status == 403


def test_one_tenant_never_sees_anothers_messages(
    gateway: Gateway, page: Page, context: BrowserContext
) -> None:
    mine, theirs = _tenant(gateway), _tenant(gateway)
    my_key = gateway.key(["send", "read"], mine)
    their_key = gateway.key(["send", "read"], theirs)
    own = gateway.send(my_key, subject="mine")
    other = gateway.send(their_key, subject="theirs")
    log_in(page, gateway, my_key)
    page.goto(f"{gateway.url}/ui/messages")
    links = page.locator("#messages tbody tr td:first-child a")
    expect(links).to_have_text([own])
    page.goto(f"{gateway.url}/ui/messages?tenant={theirs}")
    expect(page.get_by_role("alert")).to_contain_text("only an admin key")
    response = page.goto(f"{gateway.url}/ui/messages/{other}")
    assert response is not None and response.status == 404
    assert page.request.get(f"{gateway.url}/ui/messages/{other}/live").status == 404
    assert page.request.get(f"{gateway.url}/ui/messages/{other}/stream").status == 404
    page.goto(f"{gateway.url}/ui")
    expect(page.locator('[data-status="queued"], [data-status="sent"]').first).to_be_visible()


def test_suppressions_page_adds_and_removes(gateway: Gateway, page: Page) -> None:
    tenant = _tenant(gateway)
    log_in(page, gateway, gateway.key(["read", "manage"], tenant))
    page.get_by_role("link", name="Suppressions", exact=True).click()
    page.get_by_label("Suppress an address").fill("Blocked@Example.org")
    page.get_by_role("button", name="Add").click()
    expect(page.locator("#suppressions tbody")).to_contain_text("blocked@example.org")
    listed = gateway.call("GET", "/v1/suppressions", params={"tenant": tenant})["data"]
    assert [(s["email"], s["reason"]) for s in listed] == [("blocked@example.org", "manual")]
    page.get_by_label("Find an address").fill("nobody@example.org")
    page.get_by_role("button", name="Find").click()
    expect(page.locator("#suppressions tbody")).to_contain_text("None.")
    page.goto(f"{gateway.url}/ui/suppressions")
    page.get_by_role("button", name="Remove blocked@example.org").click()
    expect(page.locator("#suppressions tbody")).to_contain_text("None.")
    page.get_by_label("Suppress an address").fill("x@example.org")
    page.get_by_role("button", name="Add").click()
    page.goto(f"{gateway.url}/ui/suppressions")
    expect(page.locator("#suppressions tbody tr")).to_have_count(1)


def test_webhooks_page_creates_tests_and_retries(gateway: Gateway, page: Page) -> None:
    tenant = _tenant(gateway)
    log_in(page, gateway, gateway.key(["read", "manage"], tenant))
    page.get_by_role("link", name="Webhooks", exact=True).click()
    page.get_by_label("URL").fill("https://hooks.example.com/mailgate")
    page.get_by_label("message.bounced").check()
    page.get_by_role("button", name="Add endpoint").click()
    secret = page.locator("#secret").inner_text()
    assert secret.startswith("whsec_")
    page.goto(f"{gateway.url}/ui/webhooks")
    expect(page.locator("#secret")).to_have_count(0)  # shown once
    page.get_by_role("link", name="https://hooks.example.com/mailgate").click()
    page.get_by_role("button", name="Send a test event").click()
    rows = page.locator("#deliveries tbody tr[data-delivery]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("webhook.test")
    # The gateway's sender tries it at once, and a delivery in flight cannot be retried:
    # reload until its first try has ended (the next waits 5 s), then retry.
    deadline = time.monotonic() + 30
    cells = rows.first.locator("td")
    while cells.nth(2).inner_text().startswith("delivering") or cells.nth(3).inner_text() == "0":
        assert time.monotonic() < deadline, rows.first.inner_text()
        page.wait_for_timeout(100)
        page.reload()
    rows.first.get_by_role("button", name="Retry").click()
    expect(page.locator("#deliveries tbody tr[data-delivery]")).to_have_count(1)
    page.get_by_role("button", name="Disable").click()
    expect(page.locator("p.muted")).to_contain_text("disabled")
    page.get_by_role("button", name="Delete").click()
    expect(page.locator("#webhooks tbody")).to_contain_text("None.")
    [latest, *_] = gateway.call("GET", "/v1/audit")["data"]
    assert (latest["action"], latest["tenant_id"]) == ("webhook.delete", tenant)


def test_keys_and_tenants_pages(gateway: Gateway, page: Page, browser: Browser) -> None:
    log_in(page, gateway)
    page.get_by_role("link", name="Tenants", exact=True).click()
    name = f"acme-{uuid.uuid4().hex[:6]}"
    page.get_by_label("Name").fill(name)
    page.get_by_label("Sender domains", exact=False).fill("acme.example")
    page.get_by_label("Daily quota").fill("500")
    page.get_by_role("button", name="Make tenant").click()
    row = page.locator("#tenants tbody tr", has_text=name)
    expect(row).to_contain_text("acme.example")
    expect(row).to_contain_text("0 / 500 today")
    row.get_by_role("button", name=f"Disable {name}").click()
    expect(page.locator("#tenants tbody tr", has_text=name)).to_contain_text("disabled")
    page.locator("#tenants tbody tr", has_text=name).get_by_role("button").click()
    expect(page.locator("#tenants tbody tr", has_text=name)).to_contain_text("enabled")

    page.get_by_role("link", name="Keys", exact=True).click()
    page.get_by_label("Name").fill("reporting")
    page.get_by_label("read").check()
    page.get_by_label("send").uncheck()
    page.get_by_role("button", name="Make key").click()
    secret = page.locator("#secret").inner_text()
    assert secret.startswith("mg_")
    page.goto(f"{gateway.url}/ui/keys")
    expect(page.locator("#secret")).to_have_count(0)
    assert secret not in page.content()  # never shown again
    # The new key logs in and reads; then it is revoked from the page, and its session ends.
    other = browser.new_context()
    try:
        second = other.new_page()
        log_in(second, gateway, secret)
        page.get_by_role("button", name="Revoke reporting").first.click()
        second.goto(f"{gateway.url}/ui/messages")
        expect(second).to_have_url(re.compile(r"/ui/login"))
    finally:
        other.close()


def test_dashboard_shows_counts_chart_queue_and_providers(gateway: Gateway, page: Page) -> None:
    tenant = _tenant(gateway)
    key = gateway.key(["send", "read"], tenant)
    sent = gateway.send(key)
    gateway.wait_status(sent, "delivered", key=key)
    later = datetime.now(UTC) + timedelta(days=30)
    gateway.send(key, send_at=later.isoformat())  # scheduled: waiting
    log_in(page, gateway, key)
    expect(page.locator('[data-status="delivered"]')).to_have_text("1")
    expect(page.locator('[data-status="scheduled"]')).to_have_text("1")
    expect(page.locator("#queue-depth")).to_have_text("1")
    expect(page.locator("#oldest")).to_be_visible()
    expect(page.locator("svg.chart polyline")).to_have_count(3)
    expect(page.locator("svg.chart circle title").first).to_contain_text("sent: 1")
    expect(page.locator("tr[data-provider]")).to_have_count(2)
    expect(page.locator("tr[data-provider=sendgrid]")).to_contain_text("healthy")


def test_every_field_is_labelled_and_the_pages_fit_a_phone(
    gateway: Gateway, browser: Browser
) -> None:
    message_id = gateway.send()
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = phone.new_page()
        log_in(page, gateway)
        for path in ("", "/messages", f"/messages/{message_id}", "/send", "/failed",
                     "/providers", "/suppressions", "/webhooks", "/keys", "/tenants"):  # fmt: skip
            page.goto(f"{gateway.url}/ui{path}")
            unlabelled = page.evaluate(
                """() => [...document.querySelectorAll('input, select, textarea')]
                     .filter(f => f.type !== 'hidden' && f.labels.length === 0)
                     .map(f => f.name)"""
            )
            assert unlabelled == [], (path, unlabelled)
            overflow = page.evaluate(
                "() => document.body.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 1, (path, overflow)
    finally:
        phone.close()


def test_the_keyboard_alone_logs_in_and_reaches_the_menu(gateway: Gateway, page: Page) -> None:
    page.goto(f"{gateway.url}/ui/login")
    expect(page.get_by_label("API key")).to_be_focused()  # autofocus: no click needed
    page.keyboard.type(gateway.admin_key)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/ui$"))
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    # The skip link led past the menu: the focus is on a control inside the page's main part.
    tag, in_main = page.evaluate(
        "() => [document.activeElement.tagName, !!document.activeElement.closest('main')]"
    )
    assert tag in {"A", "BUTTON", "INPUT", "SELECT", "TEXTAREA"} and in_main
