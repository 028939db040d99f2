"""A failover drill: steady traffic while the primary fails, recovers, is switched off and on.

    .venv/bin/python -m bench.drill                 # SQLite, 50 messages/s, 6 s per phase
    .venv/bin/python -m bench.drill --database postgresql --rate 100

mailgate serve runs with two fake providers (primary: SendGrid, backup:
Mailgun, both answering in 20 ms; breaker cool-down 5 s, attempt timeout
2 s) and a steady stream of sends. Each phase changes one thing; the table
says, per phase, how many messages were accepted in it, where the sends made
during it went, how long after the phase began traffic reached the provider
it should now go to (failover time, or recovery time), and how many of the
messages accepted in it were lost or sent twice.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp

from bench.harness import MESSAGE, Service, service

Action = Callable[[aiohttp.ClientSession, Service], Awaitable[None]]


async def _behaviour(session: aiohttp.ClientSession, url: str, **values: object) -> None:
    async with session.post(f"{url}/_fake/behaviour", json=values) as r:
        assert r.status == 200


def fake(which: str, **values: object) -> Action:
    async def act(session: aiohttp.ClientSession, svc: Service) -> None:
        await _behaviour(session, svc.sendgrid if which == "primary" else svc.mailgun, **values)

    return act


def api(path: str, body: dict[str, str] | None = None) -> Action:
    async def act(session: aiohttp.ClientSession, svc: Service) -> None:
        headers = {"Authorization": f"Bearer {svc.key}"}
        async with session.post(f"{svc.url}{path}", json=body, headers=headers) as r:
            assert r.status == 200, await r.text()

    return act


DRILL = "/v1/providers/primary/simulate-failure"
PHASES: list[tuple[str, Action | None, str]] = [
    # (what happens, how, where traffic should go from then on)
    ("both healthy", None, "primary"),
    ("primary answers 503", fake("primary", status=503), "backup"),
    ("primary recovers", fake("primary", status=None), "primary"),
    ("primary stops answering", fake("primary", hang=True), "backup"),
    ("primary recovers", fake("primary", hang=False), "primary"),
    ("primary disabled by the operator", api("/v1/providers/primary/disable"), "backup"),
    ("primary enabled again", api("/v1/providers/primary/enable"), "primary"),
    ("drill: simulated errors", api(DRILL, {"mode": "error"}), "backup"),
    ("drill over", api(DRILL, {"mode": "off"}), "primary"),
]


@dataclass
class Phase:
    name: str
    started: float
    target: str
    accepted: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PhaseReport:
    """One phase: what was accepted in it, where its sends went, and how soon."""

    name: str
    target: str
    accepted: int
    via: dict[str, int]
    """Sends made during the phase, by provider."""
    on_target_after: float | None
    """Seconds from the phase's start to the first send via its target (None: never)."""
    lost: int
    """Messages accepted in this phase that no provider received."""
    doubles: int
    """Messages accepted in this phase that the providers received more than once."""


@dataclass(frozen=True)
class Report:
    phases: list[PhaseReport]

    @property
    def accepted(self) -> int:
        return sum(p.accepted for p in self.phases)

    @property
    def lost(self) -> int:
        return sum(p.lost for p in self.phases)

    @property
    def doubles(self) -> int:
        return sum(p.doubles for p in self.phases)

    def table(self) -> str:
        lines = [
            "| phase | accepted | sent via primary | sent via backup "
            "| traffic on target after | lost | sent twice |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for p in self.phases:
            after = "-" if p.on_target_after is None else f"{p.on_target_after:.2f} s"
            lines.append(
                f"| {p.name} | {p.accepted} | {p.via['primary']} | {p.via['backup']} "
                f"| {after} ({p.target}) | {p.lost} | {p.doubles} |"
            )
        lines.append("")
        lines.append(
            f"accepted {self.accepted}, delivered {self.accepted - self.lost}, "
            f"lost {self.lost}, sent twice {self.doubles}"
        )
        return "\n".join(lines)


async def run(engine: str, rate: float, seconds: float, *, quiet: bool = False) -> Report:
    async with service(
        engine=engine,
        latency=0.02,
        keep=100_000,
        attempt_timeout_seconds=2,
        provider_settings={"breaker_cooldown_seconds": 5},
    ) as svc:
        headers = {"Authorization": f"Bearer {svc.key}"}
        phases: list[Phase] = []
        async with aiohttp.ClientSession() as session:
            stop = asyncio.Event()

            async def stream() -> None:
                while not stop.is_set():
                    async with session.post(
                        f"{svc.url}/v1/messages", json=MESSAGE, headers=headers
                    ) as r:
                        if r.status == 202 and phases:
                            phases[-1].accepted.append((await r.json())["id"])
                    await asyncio.sleep(1 / rate)

            sender = asyncio.create_task(stream())
            for name, action, target in PHASES:
                if action is not None:
                    await action(session, svc)
                phases.append(Phase(name, time.time(), target))
                if not quiet:
                    print(f"phase: {name}", flush=True)
                await asyncio.sleep(seconds)
            stop.set()
            await sender
            every = {i for p in phases for i in p.accepted}
            deadline = time.time() + 60
            while time.time() < deadline:
                primary, backup = (
                    await _counts(session, svc.sendgrid),
                    await _counts(session, svc.mailgun),
                )
                if every <= set(primary) | set(backup):
                    break
                await asyncio.sleep(0.5)
            sends = await _sends(session, svc, [i for p in phases for i in p.accepted])
    reports = []
    for n, phase in enumerate(phases):
        end = phases[n + 1].started if n + 1 < len(phases) else float("inf")
        during = [(at, name) for at, name in sends if phase.started <= at < end]
        first = next((at for at, name in during if name == phase.target), None)
        received = [primary.get(i, 0) + backup.get(i, 0) for i in phase.accepted]
        reports.append(
            PhaseReport(
                name=phase.name,
                target=phase.target,
                accepted=len(phase.accepted),
                via={
                    name: sum(1 for _, p in during if p == name) for name in ("primary", "backup")
                },
                on_target_after=None if first is None else first - phase.started,
                lost=sum(1 for r in received if r == 0),
                doubles=sum(1 for r in received if r > 1),
            )
        )
    return Report(reports)


async def _counts(session: aiohttp.ClientSession, url: str) -> dict[str, int]:
    async with session.get(f"{url}/_fake/counts") as r:
        return dict(await r.json())


async def _sends(
    session: aiohttp.ClientSession, svc: Service, ids: list[str]
) -> list[tuple[float, str]]:
    """(when, which provider) of every `sent` event of these messages, in time order."""
    headers = {"Authorization": f"Bearer {svc.key}"}
    sends = []
    for message_id in ids:
        async with session.get(f"{svc.url}/v1/messages/{message_id}", headers=headers) as r:
            view = await r.json()
        for event in view["events"]:
            if event["type"] == "sent":
                at = datetime.fromisoformat(event["at"].replace("Z", "+00:00")).timestamp()
                sends.append((at, str(event["detail"]["provider"])))
    return sorted(sends)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--rate", type=float, default=50.0, help="sends per second")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each phase")
    args = parser.parse_args()
    report = asyncio.run(run(args.database, args.rate, args.seconds))
    print()
    print(report.table())


if __name__ == "__main__":
    main()
