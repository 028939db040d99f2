"""The `mailgate` command against a running gateway (`--url`, `MAILGATE_KEY`).

One real `mailgate serve` on SQLite; each command runs in process through
Typer's runner, over HTTP, and where it reads, also on the same database
directly: the two must print the same thing.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailgate.cli import app
from tests.e2e.processes import KEY, URL

runner = CliRunner()


@dataclass(frozen=True)
class Gateway:
    url: str
    key: str
    config: Path
    database: Path


def _serve(config: Path, cwd: Path) -> Iterator[tuple[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailgate", "serve", "--port", "0", "--config", str(config)],
        cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            text = "".join(lines)
            url, key = URL.search(text), KEY.search(text)
            if url and key:
                break
            assert proc.poll() is None, f"serve exited:\n{text}"
            assert time.monotonic() < deadline, f"serve did not start:\n{text}"
            time.sleep(0.05)
        yield url[1], key[1]
    finally:
        proc.terminate()
        proc.wait(30)
        reader.join(5)
        proc.stderr.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("remote")
    database = directory / "mailgate.db"
    config = directory / "mailgate.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{database}"\n'
        '[delivery]\ndefault_from = "Robot <robot@example.com>"\n'
        "[webhooks]\nblock_private_addresses = false\n"
    )
    for url, key in _serve(config, directory):
        yield Gateway(url, key, config, database)


def remote(gw: Gateway, *args: str, key: str | None = None) -> tuple[int, str, str]:
    """The command over HTTP (the key from MAILGATE_KEY, as an operator would set it)."""
    result = runner.invoke(
        app, ["--url", gw.url, *args], env={"MAILGATE_KEY": key or gw.key, "MAILGATE_URL": None}
    )
    return result.exit_code, result.stdout, result.stderr


def local(gw: Gateway, *args: str) -> tuple[int, str, str]:
    """The command on the database directly."""
    result = runner.invoke(
        app, [*args, "--config", str(gw.config)], env={"MAILGATE_URL": None, "MAILGATE_KEY": None}
    )
    return result.exit_code, result.stdout, result.stderr


def same(gw: Gateway, *args: str) -> str:
    """What the command prints, checked to be the same over HTTP and on the database."""
    over_http, direct = remote(gw, *args), local(gw, *args)
    assert over_http == direct
    assert over_http[0] == 0, over_http
    return over_http[1]


def wait_final(gw: Gateway, message_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 20
    while True:
        code, out, _ = remote(gw, "status", message_id, "--json")
        assert code == 0
        message: dict[str, object] = json.loads(out)
        if message["status"] in ("delivered", "failed") or time.monotonic() > deadline:
            return message
        time.sleep(0.1)


def test_providers_read_the_same_and_switch_over_http(gateway: Gateway) -> None:
    listed = json.loads(same(gateway, "providers", "list", "--json"))["data"]
    assert len(listed) >= 2 and all(p["enabled"] for p in listed)
    assert listed[0]["name"] in same(gateway, "providers", "list")
    name = listed[0]["name"]
    assert remote(gateway, "providers", "disable", name) == (0, f"{name} disabled\n", "")
    rows = json.loads(same(gateway, "providers", "list", "--json"))["data"]
    assert [p["enabled"] for p in rows if p["name"] == name] == [False]
    events = json.loads(same(gateway, "providers", "events", name, "--json"))["data"]
    assert events[0]["type"] == "disabled"
    assert remote(gateway, "providers", "enable", name) == (0, f"{name} enabled\n", "")
    code, _, err = remote(gateway, "providers", "disable", "nope")
    assert code == 1 and "no provider 'nope'" in err


def test_send_then_status_the_same_both_ways(gateway: Gateway) -> None:
    args = ("send", "--to", "bob@example.org", "--cc", "Eve <eve@example.org>",
            "--subject", "Über alles", "--text", "Hello", "--tag", "remote", "--json")  # fmt: skip
    code, _, err = remote(gateway, *args)
    assert code == 2 and "give --from" in err  # the default tenant has no default_from
    # The local config's delivery.default_from is the sender, as on the store.
    code, out, err = remote(gateway, *args, "--config", str(gateway.config))
    assert code == 0, err
    sent = json.loads(out)
    assert sent["from"]["email"] == "robot@example.com"
    assert sent["tags"] == ["remote"] and sent["subject"] == "Über alles"
    assert wait_final(gateway, sent["id"])["status"] == "delivered"
    assert json.loads(same(gateway, "status", sent["id"], "--json"))["id"] == sent["id"]
    assert "Über alles" in same(gateway, "status", sent["id"])
    code, out, _ = remote(gateway, "send", "--from", "me@example.com", "--to", "c@example.org",
                          "-s", "S", "--html", "<b>x</b>")  # fmt: skip
    assert code == 0 and out.endswith(" queued\n") and out.startswith("msg_")


def test_errors_read_and_exit_the_same_both_ways(gateway: Gateway) -> None:
    unknown = "msg_01J00000000000000000000000"
    code, out, err = remote(gateway, "status", unknown)
    assert (code, out, err) == local(gateway, "status", unknown)
    assert code == 1 and unknown in err
    # Bad input is a usage error before anything is sent, either way.
    for args in (
        ("send", "--to", "not-an-address", "-s", "S", "--text", "t"),
        ("send", "--to", "a@example.org", "-s", "S"),
        ("send", "--to", "a@example.org", "-s", "Bad\r\nBcc: x@example.org", "--text", "t"),
        ("retry", "--status", "sent"),
        ("retry", "--since", "yesterday"),
        ("webhooks", "create", "--url", "ftp://x"),
        ("tenants", "create", "--name", "x", "--rate-limit", "lots"),
        ("suppressions", "add", "nobody"),
    ):
        over_http, direct = remote(gateway, *args), local(gateway, *args)
        assert over_http[0] == direct[0] == 2, (args, over_http, direct)
    code, _, err = remote(gateway, "retry", "--tenant", "nobody")
    assert (code, "no tenant") == (1, "no tenant") and "no tenant" in err


def test_keys_over_http(gateway: Gateway) -> None:
    code, out, _ = remote(gateway, "keys", "create", "--name", "ops", "--scope", "read", "--json")
    assert code == 0
    made = json.loads(out)
    assert made["key"].startswith("mg_") and made["scopes"] == ["read"]
    listed = json.loads(same(gateway, "keys", "list", "--tenant", "default", "--json"))["data"]
    assert made["id"] in [k["id"] for k in listed] and made["key"] not in json.dumps(listed)
    # The new key reads but may not change anything.
    assert remote(gateway, "providers", "list", key=made["key"])[0] == 0
    code, _, err = remote(gateway, "keys", "create", "--name", "x", key=made["key"])
    assert code == 1 and "manage" in err
    assert remote(gateway, "keys", "revoke", made["id"]) == (0, f"{made['id']} revoked\n", "")
    rows = json.loads(local(gateway, "keys", "list", "--json")[1])["data"]
    assert [k["revoked_at"] is not None for k in rows if k["id"] == made["id"]] == [True]
    code, _, err = remote(gateway, "providers", "list", key=made["key"])
    assert code == 1 and "error" in err
    code, out, _ = remote(gateway, "keys", "create", "--name", "plain")
    assert code == 0 and "shown once" in out and "tenant default" in out


def test_tenants_over_http_by_id_and_by_name(gateway: Gateway) -> None:
    code, out, err = remote(
        gateway, "tenants", "create", "--name", "acme", "--sender-domain", "acme.example",
        "--default-from", "Acme <hello@acme.example>", "--daily-quota", "50",
    )  # fmt: skip
    assert code == 0, err
    tenant_id = out.split()[0]
    assert out == f"{tenant_id} created (acme)\n"
    shown = json.loads(same(gateway, "tenants", "show", "acme", "--json"))
    assert shown["id"] == tenant_id and shown["daily_quota"] == 50
    assert same(gateway, "tenants", "show", tenant_id) == same(gateway, "tenants", "show", "acme")
    code, out, _ = remote(
        gateway, "tenants", "update", "acme", "--clear", "daily-quota", "--rate-limit", "10/s",
        "--json",
    )  # fmt: skip
    changed = json.loads(out)
    assert code == 0 and changed["daily_quota"] is None and changed["rate_limit"] == "10/s"
    assert changed["default_from"] == "Acme <hello@acme.example>"  # untouched
    assert remote(gateway, "tenants", "disable", "acme") == (0, f"{tenant_id} disabled\n", "")
    assert json.loads(same(gateway, "tenants", "show", "acme", "--json"))["enabled"] is False
    assert remote(gateway, "tenants", "enable", tenant_id) == (0, f"{tenant_id} enabled\n", "")
    assert "acme" in same(gateway, "tenants", "list")
    listed = json.loads(same(gateway, "tenants", "list", "--json"))["data"]
    assert {t["name"] for t in listed} >= {"acme", "default"}
    code, _, err = remote(gateway, "tenants", "show", "nobody")
    assert (code, err) == local(gateway, "tenants", "show", "nobody")[::2]
    assert code == 1
    # A key of the new tenant sends as it; its quota and rules are the gateway's.
    code, out, _ = remote(gateway, "keys", "create", "--name", "app", "--tenant", tenant_id,
                          "--scope", "send", "--scope", "read", "--json")  # fmt: skip
    app_key = json.loads(out)["key"]
    code, out, _ = remote(gateway, "send", "--to", "x@example.org", "-s", "S", "--text", "t",
                          "--json", key=app_key)  # fmt: skip
    assert code == 0 and json.loads(out)["from"]["email"] == "hello@acme.example"
    elsewhere = ("--from", "me@other.example", "--to", "x@example.org", "-s", "S", "--text", "t")
    code, _, err = remote(gateway, "send", *elsewhere, key=app_key)
    assert code == 1 and "error (from)" in err
    code, _, err = remote(gateway, "send", "--tenant", "default", "--to", "x@example.org",
                          "-s", "S", "--text", "t")  # fmt: skip
    assert code == 2 and "--tenant" in err


def test_suppressions_over_http(gateway: Gateway) -> None:
    code, out, _ = remote(gateway, "suppressions", "add", "Gone@Example.org")
    assert (code, out) == (0, "gone@example.org suppressed for tenant default\n")
    rows = json.loads(same(gateway, "suppressions", "list", "--json"))["data"]
    assert [(r["email"], r["reason"]) for r in rows] == [("gone@example.org", "manual")]
    assert "gone@example.org" in same(gateway, "suppressions", "list", "--reason", "manual")
    code, _, err = remote(gateway, "suppressions", "add", "gone@example.org")
    assert code == 1 and "error" in err
    code, out, _ = remote(gateway, "suppressions", "remove", "gone@example.org")
    assert (code, out) == (0, "gone@example.org removed from tenant default's suppressions\n")
    assert json.loads(same(gateway, "suppressions", "list", "--json"))["data"] == []


def test_webhooks_over_http(gateway: Gateway) -> None:
    code, out, err = remote(
        gateway, "webhooks", "create", "--url", "http://127.0.0.1:9/hook",
        "--event", "message.bounced", "--description", "ops", "--json",
    )  # fmt: skip
    assert code == 0, err
    made = json.loads(out)
    assert made["secret"].startswith("whsec_") and made["events"] == ["message.bounced"]
    listed = json.loads(same(gateway, "webhooks", "list", "--tenant", "default", "--json"))["data"]
    assert [w["id"] for w in listed] == [made["id"]] and "secret" not in listed[0]
    code, out, _ = remote(gateway, "webhooks", "test", made["id"])
    assert code == 0 and out.startswith("delivery ") and made["id"] in out
    rows = json.loads(remote(gateway, "webhooks", "deliveries", made["id"], "--json")[1])["data"]
    assert [r["event_type"] for r in rows] == ["webhook.test"]
    missing = made["id"][:-1] + ("1" if made["id"].endswith("0") else "0")
    code, _, err = remote(gateway, "webhooks", "test", missing)
    assert (code, err) == local(gateway, "webhooks", "test", missing)[::2]
    assert code == 1 and "no webhook" in err


def test_bulk_retry_over_http(gateway: Gateway) -> None:
    ids = []
    for tag in ("bulk", "bulk", "other"):
        code, out, _ = remote(gateway, "send", "--from", "me@example.com", "--to",
                              "a@example.org", "-s", "S", "--text", "t", "--tag", tag,
                              "--json")  # fmt: skip
        ids.append(json.loads(out)["id"])
    for message_id in ids:
        wait_final(gateway, message_id)
    with sqlite3.connect(gateway.database) as db:
        db.execute("UPDATE messages SET status = 'failed' WHERE id IN (?, ?)", ids[1:])
    dry = ("retry", "--tag", "bulk", "--since", "1h", "--dry-run")
    assert same(gateway, *dry) == "1 failed messages match; nothing changed (--dry-run)\n"
    code, out, _ = remote(gateway, "retry", "--json")
    assert code == 0 and json.loads(out) == {"matched": 2, "retried": 2}
    # (Read one way only: the worker is sending it again while we look.)
    events = json.loads(remote(gateway, "status", ids[2], "--json")[1])["events"]
    assert "retried" in [e["type"] for e in events]


def test_the_url_and_key_are_checked(gateway: Gateway, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["--url", gateway.url, "status", "x"], env={"MAILGATE_KEY": None, "MAILGATE_URL": None}
    )
    assert result.exit_code == 2 and "MAILGATE_KEY" in result.stderr
    code, _, err = remote(gateway, "providers", "list", key="mg_wrong")
    assert code == 1 and err.startswith("error")
    code, _, err = remote(gateway, "serve")
    assert code == 2 and "local database" in err
    result = runner.invoke(app, ["--url", "gateway:8000", "status", "x"])
    assert result.exit_code == 2 and "http://" in result.stderr
    # Nothing listens there: a clear failure, not a traceback.
    closed = "http://127.0.0.1:9"
    result = runner.invoke(app, ["--url", closed, "status", "x"], env={"MAILGATE_KEY": "mg_x"})
    assert result.exit_code == 1 and "cannot connect" in result.stderr
    # MAILGATE_URL in the environment does not redirect the commands that only work locally.
    config = tmp_path / "mailgate.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/m.db"\n')
    result = runner.invoke(
        app, ["db", "upgrade", "--config", str(config)], env={"MAILGATE_URL": gateway.url}
    )
    assert result.exit_code == 0, result.stderr
    # ... and the commands that can go remote follow it.
    result = runner.invoke(
        app,
        ["providers", "list", "--json"],
        env={"MAILGATE_URL": gateway.url, "MAILGATE_KEY": gateway.key},
    )
    assert result.exit_code == 0 and json.loads(result.stdout)["data"]
