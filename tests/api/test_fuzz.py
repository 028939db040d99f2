"""The HTTP API fuzzed against its own OpenAPI document (schemathesis on Hypothesis).

Clients are generated from `/openapi.json`, so the document is a promise: this
test holds the app to it. For every operation of mailgate's own API the
document lists (the drop-in provider routes speak the providers' shapes and
have tests/compat), schemathesis
generates requests that fit the schema (positive) and requests that break it
(negative). Random ids and addresses only ever reach a 400 or a 404, so
fuzzing dictionaries mix in values that get further: ids of objects seeded
in the store (messages queued and failed, a tenant, a key, the providers),
valid addresses, and hostile strings (NUL bytes, `*`, path tricks) in the
free-text parameters and fields; and each send route starts with valid
messages, once new, once repeated with its `Idempotency-Key`, once reusing
that key for another body. Every answer must pass:

- `not_a_server_error`: no 5xx, whatever was sent;
- `status_code_conformance`, `content_type_conformance`,
  `response_schema_conformance`, `response_headers_conformance`: the status
  is one the operation documents, and the body matches that status's
  documented content type and schema (`ErrorOut` for every error: the
  `{"error": {"code", "message", "field"}}` shape, nothing more);
- `negative_data_rejection`: a request that breaks the schema gets a 4xx;
- `nothing_stored`: after a 4xx every table reads exactly as before the
  request (rows compared, not only counted, so a refused PATCH that changed a
  field half-way is caught too).

`positive_data_acceptance` is off on purpose: the app refuses more than the
schema says (addresses are checked with email-validator, names have
patterns), and a 400 for a random string in an address field is right.

The app runs on a real uvicorn on loopback inside the test's event loop (the
store's connections belong to that loop) and schemathesis sends with its own
transport, so the checks see the bytes a client sees, the server's own limits
included. Hypothesis is synchronous, so it runs in a worker thread and reads
the store back through the loop.

Bounded for CI: a fixed number of examples per operation and mode,
derandomized (the same code sends the same requests every run, so a failure
reproduces), no shrinking, no example database, and smaller passes for the
keys that mostly get 403.
"""

from __future__ import annotations

import asyncio
import traceback
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Connection, select, update

from mailgate.api import create_app
from mailgate.api.suppressions import cursor_of as suppression_cursor
from mailgate.config import Settings
from mailgate.metrics import Metrics
from mailgate.serving import serve_asgi
from mailgate.store import Scope, Store
from mailgate.store.tables import messages, metadata
from tests.helpers import message, new_message, tenant

T = TypeVar("T")
Operation = schemathesis.APIOperation[Any, Any, Any, Any]
Case = schemathesis.Case[Any]
Mode = schemathesis.GenerationMode
Rows = dict[str, list[str]]

POSITIVE = Mode.POSITIVE
NEGATIVE = Mode.NEGATIVE

CHECKS: list[schemathesis.CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]

HOSTILE = ["\x00", "a\x00b", "*", "%", "../..", "' OR '1'='1", "\u202e", "\U0001f4e8"]
"""Mixed into the free-text parameters and fields `fuzz_config` names: what databases,
routers and logs trip on."""


@dataclass(frozen=True)
class Pass:
    """One run over every operation: the calling key's scopes and each operation's budget."""

    scopes: tuple[Scope, ...]
    examples: int
    modes: tuple[Mode, ...] = (POSITIVE, NEGATIVE)


PASSES = {
    "admin": Pass((Scope.ADMIN,), examples=12),
    # Mostly 403s: these passes show those are documented and store nothing.
    "send": Pass((Scope.SEND,), examples=3, modes=(POSITIVE,)),
    "read": Pass((Scope.READ,), examples=3, modes=(POSITIVE,)),
}


async def seed(store: Store) -> dict[str, list[str]]:
    """Objects for requests to name, by the parameter that names them.

    `default` gets a `default_from` (a message without `from` can be accepted)
    and a daily quota far above what the test sends (so the quota is counted).
    Two messages of each status, so that a cancel or retry early in the run
    leaves one for later.
    """
    await store.update_tenant(
        "default", default_from="Ops <ops@example.com>", daily_quota=1_000_000
    )
    queued = [new_message() for _ in range(2)]
    failed = [new_message() for _ in range(2)]
    for item in queued + failed:
        await store.accept(item)
    failed_ids = [m.id for m in failed]
    await store.db.write(
        lambda conn: conn.execute(
            update(messages).where(messages.c.id.in_(failed_ids)).values(status="failed")
        )
    )
    other = await store.create_tenant(tenant())
    key, _ = await store.create_key("fuzzed", tenant_id="default", scopes=[Scope.SEND])
    suppressed = [f"gone{i}@example.org" for i in range(4)]
    for address in suppressed:
        await store.add_suppression("default", address)
    listed = await store.list_suppressions("default", limit=2)
    hooks = [
        await store.create_webhook("default", f"https://hooks.example.com/{i}", ["*"])
        for i in range(3)
    ]
    deliveries = [str(await store.test_webhook("default", w.id)) for w in hooks]
    return {
        "webhook_id": [w.id for w in hooks],
        "delivery_id": deliveries,
        "suppression_cursor": [suppression_cursor(s) for s in listed],
        "message_id": [m.id for m in queued] + failed_ids,
        "tenant_id": ["default", other.id],
        "key_id": [key.id],
        "email": suppressed,
    }


def fuzz_config(seeds: dict[str, list[str]], providers: list[str]) -> schemathesis.Config:
    """Dictionaries that get generated requests past the first 400 or 404.

    Positive cases draw only the entries their schema allows, negative ones
    only the others, so one list per field serves both. Path parameters take
    a dictionary entry most of the time: a random id is a 404 and no more.
    """
    other_tenant = seeds["tenant_id"][1]  # never `default`: a fuzzed PATCH must not rate-limit us
    addresses = ["bob@example.org", "Bob <bob@example.org>"]
    values = {
        "path.message_id": _mixed(seeds["message_id"]),
        "path.tenant_id": _mixed([other_tenant]),
        "path.key_id": _mixed(seeds["key_id"]),
        "path.name": _mixed(providers),
        "path.email": _mixed(seeds["email"]),
        "path.webhook_id": _mixed(seeds["webhook_id"]),
        "path.delivery_id": _mixed(seeds["delivery_id"]),
        "body.url": _mixed(["https://hooks.example.com/in", "http://hooks.example.com:8080/x"]),
        "body.events[*]": ["*", "message.sent", "message.bounced"],
        "query.email": _mixed(seeds["email"]),
        "body.email": _mixed(["new@example.org", *seeds["email"]]),
        "query.tenant": _mixed(seeds["tenant_id"]),
        "query.tag": HOSTILE,
        "query.to": _mixed(addresses[:1]),
        "query.cursor": _mixed(seeds["message_id"] + seeds["key_id"] + seeds["suppression_cursor"]),
        "body.from": _mixed(["ada@example.com", "Ada <ada@example.com>"]),
        **{f"body.{name}": addresses for name in ("to", "cc", "bcc", "reply_to")},
        "body.subject": _mixed(["Hello"]),
        "body.text": _mixed(["Hi Bob"]),
        "body.provider": _mixed(providers),
        "body.tenant_id": _mixed(seeds["tenant_id"]),
        "body.name": _mixed(["fuzzed-name"]),
        "body.default_from": _mixed(["Shop <orders@shop.example.com>"]),
        "body.sender_domains[*]": _mixed(["shop.example.com"]),
        "body.providers[*]": providers,
        "body.rate_limit": _mixed(["1000/s", "bogus"]),
    }
    return schemathesis.Config.from_dict(
        {
            # Unknown query parameters are ignored, as most HTTP APIs do (unknown
            # body fields are refused); so negative cases do not add them.
            "generation": {"allow-extra-parameters": False},
            "dictionaries": {_name(key): {"values": entries} for key, entries in values.items()},
            "parameters": {
                key: {
                    "dictionary": _name(key),
                    "probability": 0.8 if key.startswith("path.") else 0.5,
                }
                for key in values
            },
            # schemathesis' own list (4xx, and 5xx left to not_a_server_error), plus
            # the app's limits: a query string over the limit is a 414.
            "checks": {
                "negative_data_rejection": {
                    "expected-statuses": [*map(str, range(400, 432)), "5xx"]
                }
            },
        }
    )


def _mixed(good: list[str]) -> list[str]:
    """`good` as likely as all the hostile strings together."""
    return good * len(HOSTILE) + HOSTILE


def _name(parameter: str) -> str:
    return parameter.replace(".", "-").replace("[*]", "")


def explicit_cases(operation: Operation) -> list[Case]:
    """Valid messages for the send routes, which random bodies never are: new (202), the
    same again under its `Idempotency-Key` (200), that key with another body (409)."""
    if operation.label == "POST /v1/messages":
        bodies = [message(), message(), message(subject="Other")]
    elif operation.label == "POST /v1/messages/batch":
        batch = [message(), message(to="nobody")]  # one accepted, one refused in the answer
        bodies = [{"messages": batch}, {"messages": batch}, {"messages": batch[:1]}]
    else:
        return []
    key = {"Idempotency-Key": f"fuzz {operation.label}"}
    json = "application/json"
    return [operation.Case(body=bodies[0], media_type=json)] + [
        operation.Case(body=body, headers=key, media_type=json) for body in bodies
    ]


def strategies(operation: Operation, mode: Mode) -> list[st.SearchStrategy[Case]]:
    if mode is NEGATIVE and not (operation.body or operation.query or operation.headers):
        return []  # only free-form path parameters: nothing can break the schema
    found = [operation.as_strategy(generation_mode=mode)]
    if mode is POSITIVE:
        found += operation.get_strategies_from_examples()
    return found


def operations(schema: schemathesis.BaseSchema) -> Iterator[Operation]:
    """Every operation of mailgate's own API. The drop-in provider routes (`/compat/...`)
    answer in each provider's shapes, not `ErrorOut`, and are held to them by the
    providers' own client libraries and tests/compat."""
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # the app's own document does not load: that is the finding
        operation = result.ok()
        if not operation.path.startswith("/compat/"):
            yield operation


def hypothesis_settings_for(examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Set here, not in a global profile: no other test is fuzzed."""
    return hypothesis_settings(
        max_examples=examples,
        deadline=None,  # how long a request takes is no property of the API
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


@dataclass
class Fuzzer:
    """Sends each generated case to the running app and checks its answer (from a thread)."""

    store: Store
    loop: asyncio.AbstractEventLoop
    base_url: str
    headers: dict[str, str]
    examples: int
    last: Rows
    """Every table as the next request finds it."""
    found: list[str] = field(default_factory=list)
    answered: Counter[tuple[str, int]] = field(default_factory=Counter)

    def on_loop(self, job: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(job, self.loop).result(timeout=30)

    def nothing_stored(
        self, _ctx: schemathesis.CheckContext, response: schemathesis.Response, _case: Case
    ) -> None:
        """After a 4xx the store is as it was; after anything else, it is the new baseline."""
        before, self.last = self.last, self.on_loop(snapshot(self.store))
        if 400 <= response.status_code < 500:
            changed = [name for name, rows in before.items() if rows != self.last[name]]
            assert not changed, f"refused with {response.status_code} but changed {changed}"

    def send(self, case: Case) -> None:
        if case.operation.label == "GET /v1/events/stream" and isinstance(case.query, dict):
            value = case.query.get("max_seconds")
            if value is None or (isinstance(value, int | float) and 0 <= value <= 86400):
                case.query["max_seconds"] = 0  # a stream ends only when told to
        response = case.call(base_url=self.base_url, headers=self.headers)
        self.answered[(case.operation.label, response.status_code)] += 1
        case.validate_response(
            response, checks=CHECKS, additional_checks=[self.nothing_stored], headers=self.headers
        )

    def fuzz(self, operation: Operation, mode: Mode) -> None:
        """At most `examples` cases, stopping at the first failure (recorded, not raised)."""
        options = strategies(operation, mode)
        if not options:
            return
        test = given(case=st.one_of(options))(self.send)
        if mode is POSITIVE:
            for case in reversed(explicit_cases(operation)):  # `example` stacks: run in order
                test = example(case=case)(test)
        self.last = self.on_loop(snapshot(self.store))
        try:
            hypothesis_settings_for(self.examples)(test)()
        except (AssertionError, BaseExceptionGroup) as exc:
            report = "".join(traceback.format_exception_only(exc))
            self.found.append(f"{operation.label} ({mode.value}):\n{report}")

    def reached(self) -> set[str]:
        """Operations that answered anything past validation and lookup at least once."""
        return {label for (label, status) in self.answered if status < 300 or status == 409}


def _rows(conn: Connection) -> Rows:
    return {
        table.name: sorted(repr(tuple(row)) for row in conn.execute(select(table)))
        for table in metadata.sorted_tables
    }


async def snapshot(store: Store) -> Rows:
    """Every table's rows, read in one transaction.

    Every table, `tenant_rate` too: the calling keys' tenant has no rate limit.
    (A rate-limited tenant's refused requests do count in its window, by design.)
    """
    return await store.db.read(_rows)


@pytest.mark.timeout(180)  # every route's cases; a clean CI run took close to 60 s here
@pytest.mark.parametrize("name", list(PASSES))
async def test_api_keeps_its_documented_promises(
    name: str, settings: Settings, store: Store, metrics: Metrics, api_key: str
) -> None:
    plan = PASSES[name]
    if plan.scopes != (Scope.ADMIN,):
        _, api_key = await store.create_key(name, tenant_id="default", scopes=plan.scopes)
    app = create_app(settings, store, metrics)
    config = fuzz_config(await seed(store), [p.name for p in settings.providers])
    schema = schemathesis.openapi.from_dict(app.openapi(), config=config)
    async with serve_asgi(app) as server:
        fuzzer = Fuzzer(
            store=store,
            loop=asyncio.get_running_loop(),
            base_url=f"http://127.0.0.1:{server.port}",
            headers={"Authorization": f"Bearer {api_key}"},
            examples=plan.examples,
            last=await snapshot(store),
        )

        def fuzz_all() -> None:
            # Deletes last: the objects they remove are what the other routes ask for.
            ordered = sorted(operations(schema), key=lambda op: op.method.upper() == "DELETE")
            for operation in ordered:
                for mode in plan.modes:
                    fuzzer.fuzz(operation, mode)

        await asyncio.to_thread(fuzz_all)

    assert not fuzzer.found, "\n\n".join(fuzzer.found)
    if name == "admin":  # the dictionaries still work: nothing stuck at 400 and 404
        labels = {label for label, _ in fuzzer.answered}
        # A provider's webhook takes only that provider's signature: no fuzzer has it.
        signed = {"POST /v1/providers/{name}/webhook"}
        never = labels - fuzzer.reached() - signed
        stuck = {k: n for k, n in fuzzer.answered.items() if k[0] in never}
        assert not stuck, f"never past validation and lookup: {stuck}"
