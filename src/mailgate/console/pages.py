"""The console's pages and actions, under `/ui`.

Every page reads through the same store calls as the JSON API, confined the
same way (`Caller.scope_of`, `ApiContext.listed_tenant`), and every action
goes through the same function as its API route (the accept path, the key,
webhook and tenant makers, the audited store changes). A page needs the
scope its API route needs; what the key may not do is not shown, and a
forged request for it is refused with 403 all the same.
"""

import inspect
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.datastructures import FormData

from mailgate import __version__
from mailgate.api.context import ApiContext
from mailgate.api.errors import validation_error
from mailgate.api.events import serve_stream
from mailgate.api.keys import KEY_ID, make_key
from mailgate.api.messages import MESSAGE_ID
from mailgate.api.providers import provider_event_json, provider_reports, visible_providers
from mailgate.api.render import key_json, message_json, tenant_json
from mailgate.api.schemas import MessageIn, RetryIn
from mailgate.api.suppressions import SuppressionIn, suppression_json
from mailgate.api.tenant_schemas import KeyIn, TenantIn
from mailgate.api.tenants import make_tenant, switch_tenant
from mailgate.api.webhooks import (
    WEBHOOK_ID,
    WebhookIn,
    delivery_json,
    make_webhook,
    webhook_json,
)
from mailgate.config import ProviderSettings
from mailgate.console import chart, forms
from mailgate.console.session import CsrfRefused, LoginRequired, Session, Sessions
from mailgate.errors import InvalidRequest, NotFound, RequestError, Unauthorized
from mailgate.message import EventType, Status
from mailgate.store import Scope
from mailgate.store.eventlog import EventFilter
from mailgate.store.messages import CHARTED, MessageFilter
from mailgate.store.outbox import EVENT_TYPES

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals["version"] = __version__

_TENANT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SAFE_NEXT = re.compile(r"^/ui(/[A-Za-z0-9_/.-]*)?(\?[A-Za-z0-9_=&%.:+-]*)?$")
PAGE = 25
STATUSES = [s.value for s in Status]
DRILLS = ("off", "error", "timeout")

Handler = Callable[..., Awaitable[Response]]


def console_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/ui", include_in_schema=False)
    sessions = Sessions(ctx.store, ctx.settings.console.session_minutes)
    configured = {p.name: p for p in ctx.settings.providers}

    def render(
        request: Request,
        template: str,
        session: Session | None,
        status_code: int = 200,
        **values: Any,
    ) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            template,
            {"session": session, "me": session.caller if session else None, **values},
            status_code=status_code,
            headers=_NO_STORE,
        )

    def page(scope: Scope | None) -> Callable[[Handler], Handler]:
        """A console route needing a session whose key holds `scope`; a POST also needs the
        session's CSRF token, checked before the handler runs. Refusals render as pages."""

        def wrap(handler: Handler) -> Handler:
            async def run(request: Request, **params: Any) -> Response:
                session: Session | None = None
                form: FormData | None = None
                try:
                    session = await sessions.require(request, scope)
                    if request.method == "POST":
                        form = await forms.read_form(request)
                        sessions.check_csrf(session, form.get("csrf"))
                        request.state.form = form
                    return await handler(request, session, **params)
                except LoginRequired:
                    if request.method != "GET":
                        ended = await login_values(request, "your session has ended: log in again")
                        answer = render(request, "login.html", None, 401, **ended)
                        return with_login_cookie(request, answer)
                    return RedirectResponse(
                        f"/ui/login?next={_quoted(request)}", status_code=303, headers=_NO_STORE
                    )
                except CsrfRefused:
                    return render(request, "error.html", session, 403, title="Refused",
                                  message="This form did not come from this console session "
                                  "(its CSRF token is missing or wrong). Reload the page and "
                                  "try again.")  # fmt: skip
                except ValidationError as exc:
                    problem = validation_error(exc)
                    return render(request, "error.html", session, 400, title="Not done",
                                  message=problem.message, field=problem.field)  # fmt: skip
                except RequestError as exc:
                    return render(request, "error.html", session, exc.status_code,
                                  title="Not done", message=exc.message,
                                  field=exc.field)  # fmt: skip
                finally:
                    if form is not None:
                        await form.close()  # uploads spooled to disk

            # FastAPI reads the route's parameters from this: the handler's, without
            # `session`, which `run` supplies.
            signature = inspect.signature(handler)
            kept = [p for name, p in signature.parameters.items() if name != "session"]
            run.__signature__ = signature.replace(parameters=kept)  # type: ignore[attr-defined]
            run.__name__ = handler.__name__
            run.__doc__ = handler.__doc__
            return run

        return wrap

    async def login_values(request: Request, error: str | None = None) -> dict[str, Any]:
        response = Response()
        token = await sessions.login_form_token(request, response)
        request.state.login_cookie = response.headers.getlist("set-cookie")
        return {"login_csrf": token, "error": error, "next": _next(request)}

    def with_login_cookie(request: Request, response: Response) -> Response:
        for cookie in getattr(request.state, "login_cookie", []):
            response.headers.append("set-cookie", cookie)
        return response

    def visible(session: Session) -> list[ProviderSettings]:
        return visible_providers(configured.values(), session.caller)

    async def tenant_of(request: Request, session: Session) -> str | None:
        """Whose objects a page shows: the key's tenant; admins may pick another, or every."""
        chosen = request.query_params.get("tenant") or None
        if chosen is not None and chosen != "*" and not _TENANT_ID.match(chosen):
            raise InvalidRequest("not a tenant id", field="tenant")
        return await ctx.listed_tenant(session.caller, chosen)

    def form(request: Request) -> Any:
        return request.state.form

    # --- logging in and out -------------------------------------------------

    @router.get("/login")
    async def login_page(request: Request) -> Response:
        if await sessions.current(request) is not None:
            return RedirectResponse(_next(request), status_code=303)
        values = await login_values(request)
        return with_login_cookie(request, render(request, "login.html", None, **values))

    @router.post("/login")
    async def login(request: Request) -> Response:
        try:
            data = await forms.read_form(request)
            await sessions.check_login_csrf(request, data.get("csrf"))
        except CsrfRefused:
            values = await login_values(request, "the form had expired: try again")
            return with_login_cookie(request, render(request, "login.html", None, 403, **values))
        except RequestError as exc:
            values = await login_values(request, exc.message)
            return with_login_cookie(request, render(request, "login.html", None, 400, **values))
        await data.close()
        secret = forms.text(data, "key") or ""
        found = await ctx.store.find_key(secret) if 0 < len(secret) <= 256 else None
        if found is None:
            values = await login_values(request, "that key is unknown or revoked")
            return with_login_cookie(request, render(request, "login.html", None, 401, **values))
        key, tenant = found
        if not tenant.enabled:
            values = await login_values(request, f"tenant {tenant.id} is disabled")
            return with_login_cookie(request, render(request, "login.html", None, 403, **values))
        target = forms.text(data, "next") or "/ui"
        response = RedirectResponse(target if _SAFE_NEXT.match(target) else "/ui", 303)
        await sessions.log_in(request, response, key.id)
        return response

    @router.post("/logout")
    @page(None)
    async def logout(request: Request, session: Session) -> Response:
        response = RedirectResponse("/ui/login", status_code=303)
        await sessions.log_out(session, response)
        return response

    # --- dashboard ------------------------------------------------------------

    @router.get("")
    @page(Scope.READ)
    async def dashboard(request: Request, session: Session) -> Response:
        tenant_id = await tenant_of(request, session)
        overview = await ctx.store.overview(tenant_id)
        waiting = sum(overview.by_status.get(s, 0) for s in ("queued", "scheduled", "sending"))
        oldest = overview.oldest_waiting
        return render(
            request,
            "dashboard.html",
            session,
            by_status=[(s, overview.by_status.get(s, 0)) for s in STATUSES],
            waiting=waiting,
            oldest_age=_age(oldest) if oldest is not None else None,
            chart=chart.per_minute(overview.start, overview.per_minute, CHARTED),
            totals={k: sum(v) for k, v in overview.per_minute.items()},
            providers=await provider_reports(ctx.store, visible(session)),
            tenant=request.query_params.get("tenant") or "",
        )

    # --- messages -------------------------------------------------------------

    def message_filter(request: Request) -> tuple[MessageFilter, dict[str, str]]:
        q = request.query_params
        given = {k: q[k].strip() for k in ("to", "status", "tag", "provider", "since", "until")
                 if q.get(k, "").strip()}  # fmt: skip
        for name, value in given.items():
            if len(value) > 320 or not value.isprintable():
                raise InvalidRequest(f"{name}: not a usable filter", field=name)
        status = given.get("status")
        if status is not None and status not in STATUSES:
            raise InvalidRequest(f"status: one of {', '.join(STATUSES)}", field="status")
        where = MessageFilter(
            status=status,
            tag=given.get("tag"),
            to=given.get("to"),
            provider=given.get("provider"),
            since=forms.when(given.get("since"), "since"),
            until=forms.when(given.get("until"), "until"),
        )
        return where, given

    @router.get("/messages")
    @page(Scope.READ)
    async def messages(request: Request, session: Session) -> Response:
        where, given = message_filter(request)
        cursor = request.query_params.get("cursor") or None
        if cursor is not None and not MESSAGE_ID.match(cursor):
            raise InvalidRequest("not a cursor this page gave", field="cursor")
        tenant = request.query_params.get("tenant") or ""
        views = await ctx.store.list_messages(
            await tenant_of(request, session), limit=PAGE + 1, where=where, before_id=cursor
        )
        rows = [message_json(v, history=False) for v in views[:PAGE]]
        more = {**given, **({"tenant": tenant} if tenant else {})}
        return render(
            request,
            "messages.html",
            session,
            rows=rows,
            filters=given,
            statuses=STATUSES,
            providers=[p.name for p in visible(session)],
            next_cursor=rows[-1]["id"] if len(views) > PAGE else None,
            query=more,
            paged=cursor is not None,
            tenant=tenant,
        )

    def message_id(value: str) -> str:
        if not MESSAGE_ID.match(value):
            raise NotFound("no such message", field="id")
        return value

    @router.get("/messages/{id}")
    @page(Scope.READ)
    async def message(request: Request, session: Session, id: str) -> Response:
        view = await ctx.store.get_message(session.caller.scope_of(), message_id(id))
        return render(request, "message.html", session, m=message_json(view),
                      event_types=[e.value for e in EventType])  # fmt: skip

    @router.get("/messages/{id}/live")
    @page(Scope.READ)
    async def message_live(request: Request, session: Session, id: str) -> Response:
        """The parts of a message's page that change: what the page swaps in live."""
        view = await ctx.store.get_message(session.caller.scope_of(), message_id(id))
        return render(request, "_message_live.html", session, m=message_json(view))

    @router.get("/messages/{id}/stream")
    @page(Scope.READ)
    async def message_stream(request: Request, session: Session, id: str) -> Response:
        """The message's events as Server-Sent Events (the page refreshes on each)."""
        view = await ctx.store.get_message(session.caller.scope_of(), message_id(id))
        filters = EventFilter(tenant_id=view.tenant_id, type=None, message_id=view.id)
        tail = await ctx.store.follow_events(filters, after=None)
        return StreamingResponse(
            serve_stream(request, tail, heartbeat=15, max_seconds=600),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.post("/messages/{id}/{action}")
    @page(Scope.MANAGE)
    async def message_action(request: Request, session: Session, id: str, action: str) -> Response:
        """Cancel a queued or scheduled message, or retry a failed one."""
        caller = session.caller
        if action not in ("cancel", "retry"):
            raise NotFound(f"no action {action!r}", field="action")
        change = ctx.store.cancel if action == "cancel" else ctx.store.retry
        await change(caller.scope_of(), message_id(id), actor=caller.actor)
        return RedirectResponse(f"/ui/messages/{id}", status_code=303)

    # --- send -------------------------------------------------------------------

    @router.get("/send")
    @page(Scope.SEND)
    async def send_form(request: Request, session: Session) -> Response:
        return render(request, "send.html", session, values={}, error=None)

    @router.post("/send")
    @page(Scope.SEND)
    async def send(request: Request, session: Session) -> Response:
        data = form(request)
        values = {k: forms.text(data, k) or "" for k in
                  ("from", "to", "cc", "bcc", "subject", "text", "html", "tags")}  # fmt: skip
        raw: dict[str, Any] = {
            "to": forms.addresses(data, "to"),
            "cc": forms.addresses(data, "cc"),
            "bcc": forms.addresses(data, "bcc"),
            "subject": forms.text(data, "subject") or "",
            "tags": [t.strip() for t in values["tags"].split(",") if t.strip()],
        }
        for name in ("from", "text", "html"):
            if forms.text(data, name) is not None:
                raw[name] = forms.text(data, name)
        try:
            raw["attachments"] = await forms.attachments(data, "attachments")
            message = MessageIn.model_validate(raw)
            item, _ = await ctx.acceptor.accept(message, session.caller.tenant)
        except ValidationError as exc:
            problem = validation_error(exc)
            return render(request, "send.html", session, 400, values=values,
                          error=problem.message, field=problem.field)  # fmt: skip
        except RequestError as exc:
            if isinstance(exc, Unauthorized):
                raise
            return render(request, "send.html", session, exc.status_code, values=values,
                          error=exc.message, field=exc.field)  # fmt: skip
        return RedirectResponse(f"/ui/messages/{item.id}", status_code=303)

    # --- failed mail --------------------------------------------------------------

    def retry_body(request: Request, source: Any) -> RetryIn:
        raw = {k: forms.text(source, k) for k in ("provider", "tag", "to")}
        fields: dict[str, Any] = {k: v for k, v in raw.items() if v is not None}
        for name in ("since", "until"):
            at = forms.when(forms.text(source, name), name)
            if at is not None:
                fields[name] = at
        tenant = forms.text(source, "tenant")
        if tenant:
            fields["tenant"] = tenant
        return RetryIn.model_validate(fields)

    @router.get("/failed")
    @page(Scope.MANAGE)
    async def failed(request: Request, session: Session) -> Response:
        body = retry_body(request, request.query_params)
        where = MessageFilter(status="failed", provider=body.provider, tag=body.tag, to=body.to,
                              since=body.since, until=body.until)  # fmt: skip
        tenant_id = await ctx.listed_tenant(session.caller, body.tenant)
        matched, _ = await ctx.store.retry_matching(
            tenant_id, where, dry_run=True, actor=session.caller.actor
        )
        sample = await ctx.store.list_messages(tenant_id, limit=PAGE, where=where)
        filters = {k: v for k, v in request.query_params.items() if v}
        return render(request, "failed.html", session, matched=matched,
                      rows=[message_json(v, history=False) for v in sample], filters=filters,
                      providers=[p.name for p in visible(session)], retried=None)  # fmt: skip

    @router.post("/failed")
    @page(Scope.MANAGE)
    async def retry_failed(request: Request, session: Session) -> Response:
        body = retry_body(request, form(request))
        where = MessageFilter(status="failed", provider=body.provider, tag=body.tag, to=body.to,
                              since=body.since, until=body.until)  # fmt: skip
        matched, retried = await ctx.store.retry_matching(
            await ctx.listed_tenant(session.caller, body.tenant),
            where,
            dry_run=False,
            actor=session.caller.actor,
        )
        return render(request, "failed.html", session, matched=matched, rows=[],
                      filters={}, providers=[p.name for p in visible(session)],
                      retried=retried)  # fmt: skip

    # --- providers ------------------------------------------------------------------

    @router.get("/providers")
    @page(Scope.READ)
    async def providers(request: Request, session: Session) -> Response:
        shown = visible(session)
        recent = {p.name: [provider_event_json(e) for e in
                           await ctx.store.provider_events(p.name, limit=8)]
                  for p in shown}  # fmt: skip
        return render(request, "providers.html", session,
                      providers=await provider_reports(ctx.store, shown), recent=recent,
                      drills=DRILLS)  # fmt: skip

    @router.post("/providers/{name}/{action}")
    @page(Scope.ADMIN)
    async def provider_action(
        request: Request, session: Session, name: str, action: str
    ) -> Response:
        if name not in configured:
            raise NotFound(f"no provider {name!r} is configured", field="name")
        caller = session.caller
        if action == "enable":
            await ctx.store.switch_provider(name, "enabled", actor=caller.actor, enabled=True)
        elif action == "disable":
            await ctx.store.switch_provider(name, "disabled", actor=caller.actor, enabled=False)
        elif action == "drill":
            mode = forms.text(form(request), "mode")
            if mode not in DRILLS:
                raise InvalidRequest(f"mode: one of {', '.join(DRILLS)}", field="mode")
            await ctx.store.switch_provider(
                name, "drill", actor=caller.actor, simulated_failure=mode
            )
        else:
            raise NotFound(f"no action {action!r}", field="action")
        await ctx.on_state_change()
        return RedirectResponse("/ui/providers", status_code=303)

    # --- suppressions ------------------------------------------------------------------

    @router.get("/suppressions")
    @page(Scope.READ)
    async def suppressions(request: Request, session: Session) -> Response:
        email = (request.query_params.get("email") or "").strip().lower() or None
        if email is not None and (len(email) > 320 or not email.isprintable()):
            raise InvalidRequest("not an address", field="email")
        found = await ctx.store.list_suppressions(session.caller.tenant.id, limit=100, email=email)
        return render(request, "suppressions.html", session,
                      rows=[suppression_json(s) for s in found], email=email or "")  # fmt: skip

    def address_in(request: Request) -> str:
        """The form's `email`, validated as the API validates a suppression's."""
        body = SuppressionIn.model_validate({"email": forms.text(form(request), "email") or ""})
        return body.email.email.lower()

    @router.post("/suppressions")
    @page(Scope.MANAGE)
    async def add_suppression(request: Request, session: Session) -> Response:
        caller = session.caller
        email = address_in(request)
        await ctx.store.add_suppression(caller.tenant.id, email, actor=caller.actor)
        return RedirectResponse("/ui/suppressions", status_code=303)

    @router.post("/suppressions/remove")
    @page(Scope.MANAGE)
    async def remove_suppression(request: Request, session: Session) -> Response:
        caller = session.caller
        await ctx.store.remove_suppression(
            caller.tenant.id, address_in(request), actor=caller.actor
        )
        return RedirectResponse("/ui/suppressions", status_code=303)

    # --- webhooks ----------------------------------------------------------------------

    def webhook_id(value: str) -> str:
        if not WEBHOOK_ID.match(value):
            raise NotFound("no such webhook", field="id")
        return value

    @router.get("/webhooks")
    @page(Scope.READ)
    async def webhooks(request: Request, session: Session) -> Response:
        found = await ctx.store.list_webhooks(tenant_id=session.caller.tenant.id, limit=100)
        return render(request, "webhooks.html", session,
                      rows=[webhook_json(w) for w in found], created=None,
                      event_types=EVENT_TYPES)  # fmt: skip

    @router.post("/webhooks")
    @page(Scope.MANAGE)
    async def create_webhook(request: Request, session: Session) -> Response:
        data = form(request)
        raw: dict[str, Any] = {"url": forms.text(data, "url") or "",
                               "events": forms.listed(data, "events") or ["*"]}  # fmt: skip
        if forms.text(data, "description"):
            raw["description"] = forms.text(data, "description")
        endpoint = await make_webhook(ctx, session.caller, WebhookIn.model_validate(raw))
        found = await ctx.store.list_webhooks(tenant_id=session.caller.tenant.id, limit=100)
        return render(request, "webhooks.html", session, 201,
                      rows=[webhook_json(w) for w in found],
                      created=webhook_json(endpoint, secret=True),
                      event_types=EVENT_TYPES)  # fmt: skip

    @router.get("/webhooks/{id}")
    @page(Scope.READ)
    async def webhook(request: Request, session: Session, id: str) -> Response:
        scope = session.caller.scope_of()
        endpoint = await ctx.store.get_webhook(scope, webhook_id(id))
        deliveries = await ctx.store.webhook_deliveries(scope, id, limit=50)
        return render(request, "webhook.html", session, w=webhook_json(endpoint),
                      deliveries=[delivery_json(d) for d in deliveries])  # fmt: skip

    @router.post("/webhooks/{id}/{action}")
    @page(Scope.MANAGE)
    async def webhook_action(request: Request, session: Session, id: str, action: str) -> Response:
        scope, actor = session.caller.scope_of(), session.caller.actor
        if action == "test":
            await ctx.store.test_webhook(scope, webhook_id(id), actor=actor)
        elif action == "enable":
            await ctx.store.update_webhook(scope, webhook_id(id), actor=actor, enabled=True)
        elif action == "disable":
            await ctx.store.update_webhook(scope, webhook_id(id), actor=actor, enabled=False)
        elif action == "delete":
            await ctx.store.delete_webhook(scope, webhook_id(id), actor=actor)
            return RedirectResponse("/ui/webhooks", status_code=303)
        elif action == "retry":
            delivery = forms.text(form(request), "delivery") or ""
            if not delivery.isdigit() or len(delivery) > 18:
                raise InvalidRequest("not a delivery id", field="delivery")
            await ctx.store.retry_webhook_delivery(scope, webhook_id(id), int(delivery),
                                                   actor=actor)  # fmt: skip
        else:
            raise NotFound(f"no action {action!r}", field="action")
        return RedirectResponse(f"/ui/webhooks/{id}", status_code=303)

    # --- keys and tenants ------------------------------------------------------------------

    async def keys_page(request: Request, session: Session, status_code: int = 200,
                        created: dict[str, Any] | None = None) -> Response:  # fmt: skip
        found = await ctx.store.list_keys(tenant_id=session.caller.tenant.id, limit=100)
        scopes = [s.value for s in Scope if session.caller.is_admin or s is not Scope.ADMIN]
        rows = [key_json(k) for k in found]
        return render(request, "keys.html", session, status_code, rows=rows, created=created,
                      scopes=scopes)  # fmt: skip

    @router.get("/keys")
    @page(Scope.MANAGE)
    async def keys(request: Request, session: Session) -> Response:
        return await keys_page(request, session)

    @router.post("/keys")
    @page(Scope.MANAGE)
    async def create_key(request: Request, session: Session) -> Response:
        data = form(request)
        body = KeyIn.model_validate({"name": forms.text(data, "name") or "",
                                     "scopes": forms.listed(data, "scopes")})  # fmt: skip
        key, secret = await make_key(ctx, session.caller, body)
        return await keys_page(request, session, 201, created=key_json(key, secret))

    @router.post("/keys/{id}/revoke")
    @page(Scope.MANAGE)
    async def revoke_key(request: Request, session: Session, id: str) -> Response:
        if not KEY_ID.match(id):
            raise NotFound("no such key", field="id")
        caller = session.caller
        await ctx.store.revoke_key(id, tenant_id=caller.scope_of(), actor=caller.actor)
        ctx.guard.forget()
        return RedirectResponse("/ui/keys", status_code=303)

    @router.get("/tenants")
    @page(Scope.ADMIN)
    async def tenants(request: Request, session: Session) -> Response:
        found = await ctx.store.list_tenants(limit=200)
        used = await ctx.store.used_today([t.id for t in found])
        return render(request, "tenants.html", session,
                      rows=[tenant_json(t, used.get(t.id)) for t in found])  # fmt: skip

    @router.post("/tenants")
    @page(Scope.ADMIN)
    async def create_tenant(request: Request, session: Session) -> Response:
        data = form(request)
        raw: dict[str, Any] = {"name": forms.text(data, "name") or ""}
        domains = forms.addresses(data, "sender_domains")
        if domains:
            raw["sender_domains"] = domains
        for name in ("default_from", "rate_limit"):
            if forms.text(data, name):
                raw[name] = forms.text(data, name)
        if forms.text(data, "daily_quota"):
            raw["daily_quota"] = forms.text(data, "daily_quota")
        await make_tenant(ctx, session.caller, TenantIn.model_validate(raw))
        return RedirectResponse("/ui/tenants", status_code=303)

    @router.post("/tenants/{id}/{action}")
    @page(Scope.ADMIN)
    async def tenant_action(request: Request, session: Session, id: str, action: str) -> Response:
        if not _TENANT_ID.match(id) or action not in ("enable", "disable"):
            raise NotFound("no such tenant or action", field="id")
        await switch_tenant(ctx, session.caller, id, enabled=action == "enable")
        return RedirectResponse("/ui/tenants", status_code=303)

    return router


_NO_STORE = {"Cache-Control": "no-store", "X-Frame-Options": "DENY",
             "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
             "style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
             "Referrer-Policy": "same-origin", "X-Content-Type-Options": "nosniff"}  # fmt: skip
"""Headers every console page carries: never cached, never framed, only our own scripts."""


def _quoted(request: Request) -> str:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return quote(target, safe="/")


def _next(request: Request) -> str:
    target = request.query_params.get("next") or "/ui"
    return target if _SAFE_NEXT.match(target) else "/ui"


def _age(at: datetime) -> str:
    seconds = max(0, int((datetime.now(UTC) - at).total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"
