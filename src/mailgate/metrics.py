"""Every metric mailgate exports, defined once.

Names follow the Prometheus naming guide (`mailgate_` prefix, `_total` for
counters, `_seconds` for durations). Labels are `provider`, `outcome` and
`status`: never addresses or message ids. Each process (and each test) gets
its own registry, so nothing is global.

`mailgate serve --workers N` runs several processes; they keep their values
in files in one directory (prometheus-client's multiprocess mode, switched
on by `PROMETHEUS_MULTIPROC_DIR` before the processes start), and whichever
process answers `/metrics` sums them all (`shared_dir`).
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, *, shared_dir: Path | None = None) -> None:
        self.shared_dir = shared_dir
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self.accepted = Counter(
            "mailgate_messages_accepted_total",
            "Messages accepted (committed) by the API.",
            registry=r,
        )
        self.accept_seconds = Histogram(
            "mailgate_accept_duration_seconds",
            "Time from a send request's arrival to its durable commit.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.sent = Counter(
            "mailgate_messages_sent_total", "Messages a provider took.", ["provider"], registry=r
        )
        self.failed = Counter(
            "mailgate_messages_failed_total",
            "Messages that ended failed: `permanent` (rejected), `expired` (gave up) or "
            "`suppressed` (every recipient on the suppression list).",
            ["outcome"],
            registry=r,
        )
        self.deferred = Counter(
            "mailgate_messages_deferred_total",
            "Delivery rounds where every provider failed and the message was queued again.",
            registry=r,
        )
        self.reclaimed = Counter(
            "mailgate_messages_reclaimed_total",
            "Messages queued again because their worker lost its lease mid-send.",
            registry=r,
        )
        self.failovers = Counter(
            "mailgate_failovers_total",
            "Times a message moved on from this provider to the next in the same round.",
            ["provider"],
            registry=r,
        )
        self.attempts = Counter(
            "mailgate_provider_attempts_total",
            "Provider calls by how they ended.",
            ["provider", "outcome"],
            registry=r,
        )
        self.send_seconds = Histogram(
            "mailgate_send_duration_seconds",
            "Duration of one provider call.",
            ["provider"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.breaker_transitions = Counter(
            "mailgate_breaker_transitions_total",
            "Circuit breaker changes by the state entered.",
            ["provider", "state"],
            registry=r,
        )
        self.provider_events = Counter(
            "mailgate_provider_events_total",
            "Provider events recorded by the delivery side, by kind (breaker_opened, "
            "breaker_closed, paused, quota_exhausted, probe_failed).",
            ["provider", "kind"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "mailgate_provider_breaker_open",
            "1 while a worker sees the provider's breaker open or half-open.",
            ["provider"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.refused = Counter(
            "mailgate_requests_refused_total",
            "API requests refused by the API's rules, by error code (unauthorized, forbidden, "
            "tenant_disabled, rate_limited, quota_exceeded, invalid_request, ...).",
            ["code"],
            registry=r,
        )
        self.delivery_events = Counter(
            "mailgate_delivery_events_total",
            "Events from the providers' event webhooks recorded, by type (delivered, "
            "deferred_by_provider, bounced, complained, opened, clicked, unsubscribed).",
            ["provider", "type"],
            registry=r,
        )
        self.delivery_events_skipped = Counter(
            "mailgate_delivery_events_skipped_total",
            "Events from the providers' webhooks not recorded: `duplicate` (seen before) or "
            "`unknown_message` (no message of ours matched).",
            ["provider", "reason"],
            registry=r,
        )
        self.provider_webhooks_refused = Counter(
            "mailgate_provider_webhooks_refused_total",
            "Provider webhook requests refused: `signature` (not signed or authorised by the "
            "provider), `replay` (a one-time token seen before), `malformed` (not the "
            "provider's shape).",
            ["provider", "reason"],
            registry=r,
        )
        self.webhook_tries = Counter(
            "mailgate_webhook_tries_total",
            "Tries to deliver an event to a tenant's endpoint: `ok` (2xx in time) or `failed`.",
            ["result"],
            registry=r,
        )
        self.webhooks_disabled = Counter(
            "mailgate_webhooks_disabled_total",
            "Tenant endpoints disabled after failing every try for `disable_after_seconds`.",
            registry=r,
        )
        self.queue_depth = Gauge(
            "mailgate_queue_depth",
            "Messages waiting by status (queued, scheduled, sending), read at scrape time.",
            ["status"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )

    def render(self) -> bytes:
        if self.shared_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.shared_dir))  # type: ignore[no-untyped-call]
        ProcessCollector(registry=registry)
        return generate_latest(registry)
