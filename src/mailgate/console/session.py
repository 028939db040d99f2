"""Who is using the console: a pasted key turned into a signed, server-side session.

- Logging in checks the pasted key exactly as the API checks a bearer key
  (`Guard`), then stores a session (`store.sessions`) and sets the cookie
  `mailgate_session`: a random token and an HMAC-SHA256 signature over it,
  with a secret every process shares (kept in the store). HttpOnly,
  SameSite=Strict, scoped to `/ui`, Secure when the page came over HTTPS,
  and lasting `console.session_minutes`.
- Each request reads the session with its key and tenant in one query, so a
  revoked key or a logout ends it at once in every process, and a disabled
  tenant is refused as the API refuses it.
- Every form carries the session's CSRF token; a POST without the right one
  is refused before anything is read from the form. The login form, which
  has no session yet, carries a token signed over a nonce in a short-lived
  cookie (`mailgate_login`).
- Scopes: a page or action that needs a scope the key lacks is refused
  (`403`), and the templates hide what `Console.can` says the key may not do.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from starlette.requests import Request
from starlette.responses import Response

from mailgate.api.auth import Caller
from mailgate.errors import Forbidden, TenantDisabled
from mailgate.store import Scope, Store, utcnow

COOKIE = "mailgate_session"
LOGIN_COOKIE = "mailgate_login"
PATH = "/ui"
SECRET_NAME = "console_cookie"


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in console user: the key's caller, and the CSRF token its forms carry."""

    caller: Caller
    csrf: str
    token: str

    def can(self, scope: str) -> bool:
        return self.caller.key.allows(Scope(scope))


class LoginRequired(Exception):
    """No live session: the page sends the browser to the login form."""


class CsrfRefused(Exception):
    """A POST without this session's (or login form's) CSRF token."""


class Sessions:
    def __init__(self, store: Store, minutes: int) -> None:
        self._store = store
        self._lifetime = timedelta(minutes=minutes)
        self._secret: bytes | None = None

    async def _key(self) -> bytes:
        if self._secret is None:
            self._secret = (await self._store.shared_secret(SECRET_NAME)).encode()
        return self._secret

    async def _sign(self, value: str, purpose: str) -> str:
        mac = hmac.new(await self._key(), f"{purpose}:{value}".encode(), hashlib.sha256)
        return mac.hexdigest()

    async def _verified(self, cookie: str | None, purpose: str) -> str | None:
        """The token inside a signed cookie value, if the signature is ours."""
        if not cookie or "." not in cookie or len(cookie) > 256:
            return None
        token, _, signature = cookie.rpartition(".")
        expected = await self._sign(token, purpose)
        return token if hmac.compare_digest(signature, expected) else None

    # --- the session ---

    async def current(self, request: Request) -> Session | None:
        token = await self._verified(request.cookies.get(COOKIE), "session")
        if token is None:
            return None
        found = await self._store.find_session(token)
        if found is None:
            return None
        key, tenant, csrf, _ = found
        return Session(Caller(key, tenant), csrf, token)

    async def require(self, request: Request, scope: Scope | None = None) -> Session:
        """The live session allowed `scope`; else `LoginRequired` or a 403 error."""
        session = await self.current(request)
        if session is None:
            raise LoginRequired
        if not session.caller.tenant.enabled:
            raise TenantDisabled(f"tenant {session.caller.tenant.id} is disabled")
        if scope is not None and not session.caller.key.allows(scope):
            raise Forbidden(f"this key lacks the '{scope}' scope", field="scope")
        return session

    async def log_in(self, request: Request, response: Response, key_id: str) -> None:
        token = secrets.token_urlsafe(32)
        expires_at = utcnow() + self._lifetime
        await self._store.open_session(key_id, token, expires_at=expires_at)
        response.set_cookie(
            COOKIE,
            f"{token}.{await self._sign(token, 'session')}",
            max_age=int(self._lifetime.total_seconds()),
            path=PATH,
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        response.delete_cookie(LOGIN_COOKIE, path=PATH)

    async def log_out(self, session: Session, response: Response) -> None:
        await self._store.end_session(session.token)
        response.delete_cookie(COOKIE, path=PATH)

    @staticmethod
    def check_csrf(session: Session, submitted: object) -> None:
        if not isinstance(submitted, str) or not hmac.compare_digest(submitted, session.csrf):
            raise CsrfRefused

    # --- the login form, before there is a session ---

    async def login_form_token(self, request: Request, response: Response) -> str:
        """The CSRF token for the login form; sets the nonce cookie it is signed over."""
        nonce = await self._verified(request.cookies.get(LOGIN_COOKIE), "login")
        if nonce is None:
            nonce = secrets.token_urlsafe(24)
            response.set_cookie(
                LOGIN_COOKIE,
                f"{nonce}.{await self._sign(nonce, 'login')}",
                max_age=3600,
                path=PATH,
                secure=request.url.scheme == "https",
                httponly=True,
                samesite="strict",
            )
        return await self._sign(nonce, "login-form")

    async def check_login_csrf(self, request: Request, submitted: object) -> None:
        nonce = await self._verified(request.cookies.get(LOGIN_COOKIE), "login")
        if nonce is None or not isinstance(submitted, str):
            raise CsrfRefused
        if not hmac.compare_digest(submitted, await self._sign(nonce, "login-form")):
            raise CsrfRefused
