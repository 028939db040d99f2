"""No key, secret or provider credential in a log line, an error body, a metric or a stored row.

`docs/tenants.md`, "Secrets stay secret", as a test: a real `mailgate serve`
at debug level, with a fake of every provider type holding credentials made
up here, is driven through everything that might print them (keys, tenants,
mail, provider failures and refused credentials, wrong keys, hostile
requests, every read route, the CLI). Then every byte it wrote is searched for
every secret, whole, in part and encoded. By design, a key's secret is in the
answer that made it, and the bootstrap key in one `API key:` line of stderr
and in `bootstrap-key` beside the database.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import os
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailgate.providers import fakes
from mailgate.providers.fakes.smtp import DROP, Stage
from mailgate.serving import serve_asgi
from tests.e2e.processes import KEY, URL, write_config
from tests.helpers import eventually, message

pytestmark = pytest.mark.slow

CONTEXT = 40
"""Characters shown either side of a leak in the report."""


def token(prefix: str = "") -> str:
    return prefix + secrets.token_hex(20)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass
class Secret:
    """One secret and the forms in which a leak of it would show."""

    name: str
    needles: dict[str, bytes]

    @classmethod
    def of(cls, name: str, value: str, **encoded: str) -> Secret:
        needles = {"": value, "base64": b64(value), **encoded}
        if len(value) >= 24:
            needles |= {"first 12 chars": value[:12], "last 12 chars": value[-12:]}
        return cls(name, {form: text.encode() for form, text in needles.items()})


@dataclass
class Haystack:
    where: str
    data: bytes
    allowed: frozenset[str] = frozenset()
    """Names of the secrets this one holds by design."""


@dataclass
class Run:
    """The secrets, and everything the test saw, to search afterwards."""

    secrets: list[Secret] = field(default_factory=list)
    haystacks: list[Haystack] = field(default_factory=list)

    def secret(self, name: str, value: str, **encoded: str) -> str:
        self.secrets.append(Secret.of(name, value, **encoded))
        return value

    def saw(self, where: str, data: bytes, *allowed: str) -> None:
        self.haystacks.append(Haystack(where, data, frozenset(allowed)))

    async def record(self, response: httpx.Response) -> None:
        """Every answer the test gets, head and body (an httpx response hook)."""
        await response.aread()
        request = response.request
        where = f"{request.method} {request.url.raw_path.decode()} -> {response.status_code}"
        allowed = []
        if request.method == "POST" and request.url.path == "/v1/keys" and response.is_success:
            # The one answer that shows a key's secret: learn the secret, allow it here.
            created = response.json()
            allowed.append(f"API key {created['name']!r}")
            self.secret(allowed[0], created["key"])
        head = "".join(f"{k}: {v}\n" for k, v in response.headers.multi_items())
        self.saw(where, head.encode() + response.content, *allowed)


@dataclass
class Provider:
    name: str
    fake: fakes.FakeProvider
    config: dict[str, Any]
    rotate: str | None
    """The fake's attribute holding our credential: changed, it refuses us as for real."""

    def refuse_credentials(self) -> None:
        if isinstance(self.fake, fakes.FakeSes):
            # What AWS answers a signature it cannot match with (its JSON front ends all
            # do): the canonical request it expected, which holds the session token.
            error = "InvalidSignatureException: " + signature_mismatch(self.config)
            self.fake.behaviour.update({"status": 403, "error": error})
            return
        assert self.rotate is not None
        setattr(self.fake, self.rotate, token("rotated-"))
        if isinstance(self.fake, fakes.FakeSmtp):
            # Connections logged in before stay so; drop them and the next must log in.
            self.fake.script(Stage.MAIL, DROP)


def signature_mismatch(ses: dict[str, Any]) -> str:
    now = datetime.now(UTC)
    stamp, scope = f"{now:%Y%m%dT%H%M%SZ}", f"{now:%Y%m%d}/{ses['region']}/ses/aws4_request"
    signed = "content-type;host;x-amz-date;x-amz-security-token"
    return (
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method. Consult the service "
        "documentation for details.\n\nThe Canonical String for this request should have "
        f"been\n'POST\n/v2/email/outbound-emails\n\ncontent-type:application/json\n"
        f"host:{ses['base_url'].removeprefix('http://')}\nx-amz-date:{stamp}\n"
        f"x-amz-security-token:{ses['session_token']}\n\n{signed}\n{secrets.token_hex(32)}'"
        f"\n\nThe String-to-Sign should have been\n'AWS4-HMAC-SHA256\n{stamp}\n{scope}\n"
        f"{secrets.token_hex(32)}'\n"
    )


def providers(run: Run) -> list[Provider]:
    """A fake of every provider type, knowing the credentials we configure for it."""
    found: list[Provider] = []

    def add(fake: fakes.FakeProvider, rotate: str | None, type: str, **config: Any) -> None:
        # Probes and short cool-downs: more requests carrying credentials, more log lines.
        more = {"priority": len(found) + 1, "health_probe_seconds": 0.5}
        more["breaker_cooldown_seconds"] = 0.5
        found.append(Provider(type, fake, {"name": type, "type": type, **config, **more}, rotate))

    key = run.secret("sendgrid api_key", token("SG."))
    add(fakes.FakeSendGrid(key), "api_key", "sendgrid", api_key=key)
    key = token("key-")
    run.secret("mailgun api_key", key, basic_auth=b64(f"api:{key}"))
    domain = "mg.example.com"
    add(fakes.FakeMailgun(key, domain), "api_key", "mailgun", api_key=key, domain=domain)
    access = run.secret("ses access_key_id", "AKIA" + secrets.token_hex(8).upper())
    secret = run.secret("ses secret_access_key", token())
    session = run.secret("ses session_token", token("FwoG"))
    add(
        fakes.FakeSes(access, secret, region="eu-west-1", session_token=session),
        None, "ses", access_key_id=access, secret_access_key=secret,
        session_token=session, region="eu-west-1",
    )  # fmt: skip
    key = run.secret("postmark server token", token())
    add(fakes.FakePostmark(key), "server_token", "postmark", api_key=key)
    key = run.secret("resend api_key", token("re_"))
    add(fakes.FakeResend(key), "api_key", "resend", api_key=key)
    key = run.secret("brevo api_key", token("xkeysib-"))
    add(fakes.FakeBrevo(key), "api_key", "brevo", api_key=key)
    key, secret = token(), token()
    run.secret("mailjet api_key", key, basic_auth=b64(f"{key}:{secret}"))
    run.secret("mailjet api_secret", secret)
    add(fakes.FakeMailjet(key, secret), "api_secret", "mailjet", api_key=key, api_secret=secret)
    key = run.secret("sparkpost api_key", token())
    add(fakes.FakeSparkPost(key), "api_key", "sparkpost", api_key=key)
    key = run.secret("mandrill api_key", token("md-"))
    add(fakes.FakeMandrill(key), "api_key", "mandrill", api_key=key)
    user, password = "relay-user", token()
    plain, login = b64(f"\0{user}\0{password}"), b64(password)
    run.secret("smtp password", password, auth_plain=plain, auth_login=login)
    relay = fakes.FakeSmtp(username=user, password=password)
    add(relay, "password", "smtp", host="127.0.0.1", tls="none", username=user, password=password)
    return found


@contextlib.asynccontextmanager
async def serving(found: list[Provider]) -> AsyncIterator[None]:
    """Every fake on loopback; `base_url` (or `port`) set in each provider's config."""
    async with contextlib.AsyncExitStack() as stack:
        servers = []
        for p in found:
            if isinstance(p.fake, fakes.FakeSmtp):
                await stack.enter_async_context(p.fake)
                p.config["port"] = p.fake.port
            else:
                servers.append(await stack.enter_async_context(serve_asgi(p.fake.app())))
                p.config["base_url"] = servers[-1].url
        yield
        for server in servers:
            server.stop()  # all at once: each takes a few ticks to stop


@contextlib.asynccontextmanager
async def mailgate_serve(
    config: Path, cwd: Path, stdout: Path, stderr: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`mailgate serve` at debug level, its stdout and stderr going to files."""
    env = {**os.environ, "MAILGATE_SERVER__LOG_LEVEL": "debug", "PYTHONUNBUFFERED": "1"}
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailgate", "serve", "--port", "0", "--config", str(config),
            cwd=cwd, env=env, stdout=out, stderr=err,
        )  # fmt: skip
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def first_match(path: Path, pattern: re.Pattern[str], proc: Any) -> str:
    """The first group of `pattern` in the file `path`, waiting for it."""
    found: list[str] = []

    def seen() -> bool:
        assert proc.returncode is None, "serve exited:\n" + path.read_text()[-3000:]
        found[:] = [m[1] for m in pattern.finditer(path.read_text())]
        return bool(found)

    await eventually(seen, timeout=30, interval=0.05)
    return found[0]


async def cli(cwd: Path, config: Path, *args: str) -> tuple[str, bytes]:
    """`python -m mailgate ARGS`: its name, and what it printed on both streams."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailgate", *args, "--config", str(config),
        cwd=cwd, env={**os.environ, "COLUMNS": "250"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await proc.communicate()
    name = "mailgate " + " ".join(args)
    assert proc.returncode == 0, f"{name}: exit {proc.returncode}"
    return name, output


async def raw_request(url: str, request: str) -> bytes:
    """Send bytes no HTTP client would; what comes back."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request.encode())
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


async def expect(status: int, response: Awaitable[httpx.Response]) -> httpx.Response:
    answer = await response
    error = answer.json().get("error") if answer.content.startswith(b"{") else None
    where = f"{answer.request.method} {answer.request.url.path}"
    assert answer.status_code == status, f"{where}: {answer.status_code} ({error}), not {status}"
    return answer


def search(run: Run) -> list[str]:
    """Each leaked secret: where it shows (how often, in which form), and one example.

    Every secret in the report is masked, so the report leaks nothing itself.
    """
    masks = [
        (needle, f"<{s.name}{' ' + form if form else ''}>".encode())
        for s in run.secrets
        for form, needle in s.needles.items()
    ]
    masks.sort(key=lambda mask: -len(mask[0]))

    def masked(data: bytes) -> str:
        for needle, label in masks:
            data = data.replace(needle, label)
        return data.decode(errors="replace").replace("\n", "⏎")

    report = []
    for s in run.secrets:
        places: dict[str, int] = {}  # where (the same request polled: once) -> occurrences
        example = ""
        for hay in run.haystacks:
            if s.name in hay.allowed:
                continue
            for form, needle in s.needles.items():  # the whole secret first
                at = hay.data.find(needle)
                if at >= 0:
                    where = masked(hay.where.encode()) + (f" ({form})" if form else "")
                    places[where] = places.get(where, 0) + hay.data.count(needle)
                    around = hay.data[max(0, at - CONTEXT) : at + len(needle) + CONTEXT]
                    if not example or where.startswith("serve's"):  # a log line shows best
                        example = f"{where}: …{masked(around)}…"
                    break
        if places:
            shown = [f"{where} {n}x" for where, n in places.items()]
            more = f"; and {len(shown) - 20} more" if len(shown) > 20 else ""
            report.append(f"{s.name}, in {len(shown)} places: {'; '.join(shown[:20])}{more}")
            report.append(f"    e.g. {example}")
    return report


async def test_no_secret_is_logged_answered_counted_or_stored(tmp_path: Path) -> None:
    run = Run()
    data = tmp_path / "data"
    data.mkdir()
    out_log, err_log = tmp_path / "serve.stdout", tmp_path / "serve.stderr"
    found = providers(run)
    by_name = {p.name: p for p in found}
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(serving(found))
        config = write_config(
            tmp_path / "mailgate.toml",
            f"sqlite:///{data}/mailgate.db",
            [p.config for p in found],
            attempt_timeout_seconds=1.0,
            retry_initial_seconds=0.2,
            retry_max_seconds=0.5,
            poll_interval_seconds=0.05,
            max_age_seconds=3.0,
        )
        proc = await stack.enter_async_context(mailgate_serve(config, tmp_path, out_log, err_log))
        url = await first_match(err_log, URL, proc)
        boot = run.secret("bootstrap admin key", await first_match(err_log, KEY, proc))
        cli_key = asyncio.create_task(
            cli(tmp_path, config, "keys", "create", "--name", "from-cli", "--json")
        )

        def client(key: str | None = None) -> httpx.AsyncClient:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            hooks = {"response": [run.record]}
            return httpx.AsyncClient(base_url=url, headers=headers, event_hooks=hooks)

        admin = await stack.enter_async_context(client(boot))
        nobody = await stack.enter_async_context(client())

        # Tenants and keys over the API (`run.record` learns each new secret).
        shop = (await expect(201, admin.post("/v1/tenants", json={"name": "shop"}))).json()["id"]
        other = (await expect(201, admin.post("/v1/tenants", json={"name": "other"}))).json()["id"]

        async def new_key(name: str, tenant: str, *scopes: str) -> tuple[str, str]:
            body = {"name": name, "tenant_id": tenant, "scopes": list(scopes)}
            created = (await expect(201, admin.post("/v1/keys", json=body))).json()
            return str(created["key"]), str(created["id"])

        manager, _ = await new_key("shop-manager", shop, "send", "read", "manage")
        sender, _ = await new_key("shop-sender", shop, "send")
        revoked, revoked_id = await new_key("shop-revoked", shop, "read")
        disabled, _ = await new_key("other-app", other, "send", "read")
        shop_api = await stack.enter_async_context(client(manager))

        async def send(**fields: Any) -> str:
            response = await expect(202, shop_api.post("/v1/messages", json=message(**fields)))
            return str(response.json()["id"])

        async def reaches(message_id: str, *wanted: str) -> None:
            """Until the message has that status, or an attempt with that outcome."""
            seen: dict[str, Any] = {}

            async def check() -> bool:
                seen.update((await shop_api.get(f"/v1/messages/{message_id}")).json())
                outcomes = {a["outcome"] for a in seen["attempts"]}
                return seen["status"] in wanted or bool(outcomes.intersection(wanted))

            try:
                await eventually(check, timeout=20, interval=0.1)
            except AssertionError:
                story = [(a["provider"], a["outcome"]) for a in seen["attempts"]]
                raise AssertionError(f"{message_id} ({seen['provider']}): {story}") from None

        # Mail through every provider; three misbehave first: a 500, silence, a 429.
        async def trouble(name: str, outcomes: tuple[str, ...], **behaviour: Any) -> str:
            by_name[name].fake.behaviour.update(behaviour)
            message_id = await send(provider=name)
            await reaches(message_id, *outcomes)
            by_name[name].fake.behaviour.update({"status": None, "hang": False})
            return message_id

        sent: list[str] = [
            *await asyncio.gather(
                trouble("sendgrid", ("ambiguous",), status=500),
                trouble("postmark", ("ambiguous", "transient"), hang=True),
                trouble("brevo", ("throttled",), status=429, retry_after="0.2"),
            )
        ]
        sent += [await send(provider=name) for name in by_name]
        batch = {"messages": [message(), message()]}
        accepted = await expect(200, shop_api.post("/v1/messages/batch", json=batch))
        sent += [m["id"] for m in accepted.json()["data"]]
        for message_id in sent:
            await reaches(message_id, "sent")

        # Every provider stops knowing our credentials: auth errors, breakers, failed probes.
        for p in found:
            p.refuse_credentials()
        refused = {name: await send(provider=name) for name in by_name}
        for message_id in refused.values():
            await reaches(message_id, "auth")

        async def opened_and_probed(name: str) -> bool:
            events = (await admin.get(f"/v1/providers/{name}/events")).json()["data"]
            return {"breaker_opened", "probe_failed"} <= {e["type"] for e in events}

        for name in by_name:
            await eventually(functools.partial(opened_and_probed, name), timeout=10, interval=0.1)
        # The CLI on the same database, while the service runs (started now: it takes seconds).
        cli_reads = asyncio.gather(
            cli(tmp_path, config, "keys", "list"),
            cli(tmp_path, config, "providers", "list"),
            cli(tmp_path, config, "providers", "events", "ses", "--json"),
            cli(tmp_path, config, "status", refused["ses"], "--json"),
        )

        # Keys where keys do not go, keys that no longer work, hostile requests.
        places = "bearer query header cookie bare basic body json raw headers huge".split()
        wrong = {
            where: run.secret(f"made-up key ({where})", "mg_" + secrets.token_urlsafe(32))
            for where in places
        }
        basic = run.secret("made-up key (basic) in basic auth", b64(f"{wrong['basic']}:"))
        me = "/v1/me"
        await expect(200, nobody.get(me, headers={"Authorization": f"Bearer {revoked}"}))
        await expect(200, shop_api.post(f"/v1/keys/{revoked_id}/revoke"))
        for headers, params in [
            ({"Authorization": f"Bearer {wrong['bearer']}"}, {}),
            ({}, {"api_key": wrong["query"]}),
            ({}, {"api_key": sender}),
            ({}, {"key": manager, "access_token": boot}),
            ({"X-Api-Key": wrong["header"]}, {}),
            ({"Cookie": f"api_key={wrong['cookie']}"}, {}),
            ({"Authorization": wrong["bare"]}, {}),
            ({"Authorization": f"Basic {basic}"}, {}),
            ({"Authorization": f"Token {sender}"}, {}),
            ({"Authorization": f"Bearer {revoked}"}, {}),
        ]:
            await expect(401, nobody.get(me, headers=headers, params=params))
        await expect(200, admin.post(f"/v1/tenants/{other}/disable"))
        for path in (me, "/v1/messages"):
            await expect(403, nobody.get(path, headers={"Authorization": f"Bearer {disabled}"}))
        only_send = {"Authorization": f"Bearer {sender}"}
        await expect(403, nobody.get("/v1/tenants", headers=only_send))
        await expect(403, nobody.post("/v1/keys", headers=only_send, json={"name": "x"}))
        await expect(403, shop_api.post("/v1/keys", json={"name": "x", "scopes": ["admin"]}))
        posted = {**message(), "api_key": wrong["body"]}
        await expect(400, shop_api.post("/v1/messages", json=posted))
        as_json = {"Content-Type": "application/json"}
        broken = '{"to": ["bob@example.org"], "api_key": "' + wrong["json"] + '", "subject": '
        for body in (broken.encode(), b"\xff\xfe" + wrong["json"].encode()):
            await expect(400, shop_api.post("/v1/messages", content=body, headers=as_json))
        await expect(400, shop_api.post("/v1/messages", json=message(**{"from": "not an address"})))
        await expect(400, shop_api.post("/v1/messages", json=message(provider="nowhere")))
        await expect(404, admin.post("/v1/providers/nowhere/disable"))
        many = {f"X-Api-Key-{i}": wrong["headers"] for i in range(120)}
        await expect(431, nobody.get(me, headers={"Authorization": wrong["headers"], **many}))
        padded = f"Bearer {wrong['huge']}" + "x" * 20_000
        await expect(431, nobody.get(me, headers={"Authorization": padded}))
        with contextlib.suppress(httpx.TransportError):  # it may hang up before answering
            await nobody.get(me, headers={"Authorization": padded + "y" * 70_000})
        hostile = (
            f"GET /v1/me?api_key={wrong['raw']} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {wrong['raw']}\r\nBad header line\r\n\r\n"
        )
        run.saw("the answer to a malformed request", await raw_request(url, hostile))

        # The operator's switches and a drill; a scheduled message cancelled.
        for action in ("disable", "enable"):
            await expect(200, admin.post(f"/v1/providers/sendgrid/{action}"))
        for mode in ("error", "off"):
            drill = {"mode": mode}
            await expect(200, admin.post("/v1/providers/mailgun/simulate-failure", json=drill))
        later = await send(send_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
        await expect(200, shop_api.post(f"/v1/messages/{later}/cancel"))
        for message_id in refused.values():
            await reaches(message_id, "failed")  # expired: max_age_seconds

        # Every read route, the CLI's key included.
        made, made_output = await cli_key
        from_cli = run.secret("API key 'from-cli'", json.loads(made_output)["key"])
        run.saw(made, made_output, "API key 'from-cli'")
        await expect(200, nobody.get(me, headers={"Authorization": f"Bearer {from_cli}"}))
        for api in (admin, shop_api):
            for path in (me, "/v1/providers", "/v1/keys", "/v1/messages?limit=100"):
                await expect(200, api.get(path))
        for name in by_name:
            await expect(200, admin.get(f"/v1/providers/{name}"))
            await expect(200, shop_api.get(f"/v1/providers/{name}/events"))
        for path in (
            "/v1/tenants", f"/v1/tenants/{shop}", "/v1/keys?tenant=*", "/v1/audit?tenant=*",
            "/v1/messages?tenant=*&limit=100",
        ):  # fmt: skip
            await expect(200, admin.get(path))
        for message_id in [*sent, *refused.values(), later]:
            await expect(200, shop_api.get(f"/v1/messages/{message_id}"))
        for path in ("/healthz", "/readyz", "/openapi.json"):
            await expect(200, nobody.get(path))
        metrics = (await expect(200, nobody.get("/metrics"))).text
        assert 'outcome="auth"' in metrics and 'provider="smtp"' in metrics

        for where, output in await cli_reads:
            run.saw(where, output)
        for file in data.iterdir():
            if file.name != "bootstrap-key":
                run.saw(f"{file.name} (while serving)", file.read_bytes())

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0

    # The bootstrap key's one place in the output: a single `API key:` line.
    lines = err_log.read_text().splitlines(keepends=True)
    announced = [i for i, line in enumerate(lines) if boot in line]
    assert len(announced) == 1 and lines[announced[0]].startswith("API key: "), announced
    log = "".join(line for i, line in enumerate(lines) if i not in announced)
    run.saw("serve's stderr (but its API key line)", log.encode())
    run.saw("serve's stdout", out_log.read_bytes())
    saved = data / "bootstrap-key"
    assert saved.read_text() == boot + "\n" and saved.stat().st_mode & 0o777 == 0o600
    for file in sorted(tmp_path.rglob("*")):
        if file.is_file() and file not in (config, saved, out_log, err_log):
            run.saw(str(file.relative_to(tmp_path)), file.read_bytes())

    # The haystacks are the real thing: keys hashed in the database, the worker's story logged.
    database = b"".join(h.data for h in run.haystacks if h.where.startswith("data/"))
    for s in run.secrets:
        if s.name.startswith("API key") or s.name == "bootstrap admin key":
            assert hashlib.sha256(s.needles[""]).hexdigest().encode() in database, s.name
    named = {s.name: s.needles[""] for s in run.secrets}
    allowed = [(hay, name) for hay in run.haystacks for name in hay.allowed]
    assert len(allowed) == 5  # the four keys made over the API, the one made with the CLI
    for hay, name in allowed:  # and each answer does show its secret: the search sees bodies
        assert named[name] in hay.data, hay.where
    assert " DEBUG " in log
    for name in by_name:
        assert re.search(rf"provider {name}: breaker opened .*: {name}: \w+ [45]\d\d", log), name
    leaks = search(run)
    if leaks:
        pytest.fail("secrets leaked:\n" + "\n".join(leaks), pytrace=False)
