"""The `mailgate` command, in process through Typer's runner, on a real SQLite store."""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailgate.cli import app
from mailgate.store.migrate import head

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mailgate.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path}/mailgate.db"\n'
        '[delivery]\ndefault_from = "Robot <robot@example.com>"\n'
    )
    return path


def mailgate(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_version() -> None:
    code, out, _ = mailgate("--version")
    assert code == 0 and out.startswith("mailgate ")


def test_keys(config: Path) -> None:
    code, out, _ = mailgate("keys", "create", "--name", "ci", "--config", str(config), "--json")
    assert code == 0
    created = json.loads(out)
    assert created["key"].startswith("mg_") and created["name"] == "ci"
    code, out, _ = mailgate("keys", "list", "--config", str(config), "--json")
    [listed] = json.loads(out)["data"]
    assert listed["id"] == created["id"] and listed["revoked_at"] is None
    assert created["key"] not in out
    assert mailgate("keys", "revoke", created["id"], "--config", str(config))[0] == 0
    _, out, _ = mailgate("keys", "list", "--config", str(config), "--json")
    assert json.loads(out)["data"][0]["revoked_at"] is not None
    code, _, err = mailgate("keys", "revoke", created["id"], "--config", str(config))
    assert code == 1 and "no active key" in err
    code, out, _ = mailgate("keys", "list", "--config", str(config))
    assert code == 0 and "ci" in out


def test_send_then_status(config: Path) -> None:
    code, out, _ = mailgate(
        "send", "--to", "bob@example.org", "--to", "Eve <eve@example.org>", "--subject", "Hi",
        "--text", "Hello", "--tag", "cli", "--config", str(config), "--json",
    )  # fmt: skip
    assert code == 0
    sent = json.loads(out)
    assert sent["status"] == "queued" and sent["from"]["email"] == "robot@example.com"
    assert [a["email"] for a in sent["to"]] == ["bob@example.org", "eve@example.org"]
    code, out, _ = mailgate("status", sent["id"], "--config", str(config), "--json")
    assert code == 0
    status = json.loads(out)
    assert status["id"] == sent["id"] and status["tags"] == ["cli"]
    assert [e["type"] for e in status["events"]] == ["accepted"]
    code, out, _ = mailgate("status", sent["id"], "--config", str(config))
    assert code == 0 and sent["id"] in out and "accepted" in out
    code, out, _ = mailgate(
        "send", "--to", "x@example.org", "-s", "S", "--html", "<b>h</b>", "--config", str(config)
    )
    assert code == 0 and out.strip().endswith("queued")


def test_send_refuses_bad_input(config: Path, tmp_path: Path) -> None:
    code, _, err = mailgate(
        "send", "--to", "not-an-address", "-s", "S", "--text", "t", "--config", str(config)
    )
    assert code == 2 and "to[0]" in err
    code, _, err = mailgate("send", "--to", "a@example.org", "-s", "S", "--config", str(config))
    assert code == 2 and "--text or --html" in err
    bare = tmp_path / "bare.toml"
    bare.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/other.db"\n')
    code, _, err = mailgate(
        "send", "--to", "a@example.org", "-s", "S", "--text", "t", "--config", str(bare)
    )
    assert code == 2 and "--from" in err


def test_status_of_an_unknown_message(config: Path) -> None:
    code, _, err = mailgate("status", "msg_00000000000000000000000000", "--config", str(config))
    assert code == 1 and "no message" in err


def test_providers(config: Path) -> None:
    code, out, _ = mailgate("providers", "list", "--config", str(config), "--json")
    assert code == 0
    rows = json.loads(out)["data"]
    assert [(r["name"], r["enabled"]) for r in rows] == [("sendgrid", True), ("mailgun", True)]
    assert mailgate("providers", "disable", "sendgrid", "--config", str(config))[0] == 0
    _, out, _ = mailgate("providers", "list", "--config", str(config), "--json")
    assert json.loads(out)["data"][0]["enabled"] is False
    assert mailgate("providers", "enable", "sendgrid", "--config", str(config))[0] == 0
    code, out, _ = mailgate("providers", "list", "--config", str(config))
    assert code == 0 and "sendgrid" in out and "healthy" in out
    code, out, _ = mailgate("providers", "events", "sendgrid", "--config", str(config), "--json")
    events = json.loads(out)["data"]
    assert code == 0 and [(e["type"], e["detail"]["by"]) for e in events] == [
        ("enabled", "cli"),
        ("disabled", "cli"),
    ]
    code, out, _ = mailgate(
        "providers", "events", "sendgrid", "--limit", "1", "--config", str(config)
    )
    assert code == 0 and "enabled" in out and "disabled" not in out
    assert mailgate("providers", "events", "nope", "--config", str(config))[0] == 1
    code, _, err = mailgate("providers", "disable", "nope", "--config", str(config))
    assert code == 1 and "no provider 'nope'" in err


def test_db_upgrade_and_current(config: Path) -> None:
    code, out, _ = mailgate("db", "current", "--config", str(config))
    assert code == 0 and out.startswith("empty")
    code, out, _ = mailgate("db", "upgrade", "--config", str(config))
    assert code == 0 and head() in out
    code, out, _ = mailgate("db", "current", "--config", str(config))
    assert out.strip() == f"{head()} (up to date)"


def test_a_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nprot = 1\n")
    code, _, err = mailgate("keys", "list", "--config", str(path))
    assert code == 2 and "server.prot: unknown key" in err
    code, _, err = mailgate("keys", "list", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "does not exist" in err


def test_a_worker_needs_real_providers(config: Path) -> None:
    code, _, err = mailgate("worker", "--config", str(config))
    assert code == 2 and "no providers configured" in err


def test_a_taken_port_is_a_clear_error(config: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = mailgate("serve", "--port", str(port), "--config", str(config))
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err


def test_tenants_and_their_keys(config: Path) -> None:
    code, out, err = mailgate(
        "tenants", "create", "--name", "shop", "--sender-domain", "example.com",
        "--default-from", "Shop <shop@example.com>", "--provider", "sendgrid",
        "--daily-quota", "2", "--config", str(config), "--json",
    )  # fmt: skip
    assert code == 0, err
    shop = json.loads(out)
    assert shop["id"].startswith("ten_") and shop["sender_domains"] == ["example.com"]
    assert shop["providers"] == ["sendgrid"] and shop["daily_quota"] == 2
    code, _, err = mailgate("tenants", "create", "--name", "shop", "--config", str(config))
    assert code == 1 and "exists" in err
    code, _, err = mailgate(
        "tenants", "create", "--name", "x", "--provider", "nowhere", "--config", str(config)
    )
    assert code == 1 and "providers[0]" in err
    code, _, err = mailgate(
        "tenants", "create", "--name", "x", "--rate-limit", "fast", "--config", str(config)
    )
    assert code == 2 and "rate_limit" in err

    code, out, _ = mailgate("tenants", "list", "--config", str(config), "--json")
    assert [t["name"] for t in json.loads(out)["data"]] == ["shop", "default"]
    code, out, _ = mailgate("tenants", "list", "--config", str(config))
    assert code == 0 and "shop" in out and "2 (0)" in out
    code, out, _ = mailgate("tenants", "show", "shop", "--config", str(config), "--json")
    assert json.loads(out)["id"] == shop["id"]

    code, out, _ = mailgate(
        "keys", "create", "--name", "app", "--tenant", shop["id"], "--scope", "send",
        "--scope", "read", "--config", str(config), "--json",
    )  # fmt: skip
    key = json.loads(out)
    assert code == 0 and key["tenant_id"] == shop["id"] and key["scopes"] == ["send", "read"]
    code, out, _ = mailgate("keys", "create", "--name", "ops", "--config", str(config), "--json")
    assert json.loads(out)["scopes"] == ["admin"] and json.loads(out)["tenant_id"] == "default"
    code, _, err = mailgate(
        "keys", "create", "--name", "x", "--scope", "root", "--config", str(config)
    )
    assert code == 2
    code, out, _ = mailgate(
        "keys", "list", "--tenant", shop["id"], "--config", str(config), "--json"
    )
    assert [k["id"] for k in json.loads(out)["data"]] == [key["id"]]

    # The tenant's rules apply to `mailgate send` too: the one accept path.
    send = ["send", "--to", "bob@example.org", "--subject", "Hi", "--text", "Hello"]
    code, out, err = mailgate(*send, "--tenant", shop["id"], "--config", str(config), "--json")
    assert code == 0, err
    assert json.loads(out)["from"] == {"email": "shop@example.com", "name": "Shop"}
    code, _, err = mailgate(
        *send, "--from", "a@example.org", "--tenant", shop["id"], "--config", str(config)
    )
    assert code == 1 and "sender domains" in err
    assert mailgate(*send, "--tenant", shop["id"], "--config", str(config))[0] == 0
    code, _, err = mailgate(*send, "--tenant", shop["id"], "--config", str(config))
    assert code == 1 and "quota" in err

    code, out, _ = mailgate(
        "tenants", "update", "shop", "--daily-quota", "5", "--clear", "providers",
        "--config", str(config), "--json",
    )  # fmt: skip
    assert json.loads(out)["daily_quota"] == 5 and json.loads(out)["providers"] is None
    assert json.loads(out)["used_today"] == 2
    assert mailgate("tenants", "disable", "shop", "--config", str(config))[0] == 0
    code, _, err = mailgate(*send, "--tenant", shop["id"], "--config", str(config))
    assert code == 1 and "disabled" in err
    assert mailgate("tenants", "enable", shop["id"], "--config", str(config))[0] == 0
    code, _, err = mailgate("tenants", "disable", "default", "--config", str(config))
    assert code == 1 and "stays enabled" in err
    code, _, err = mailgate("tenants", "show", "nobody", "--config", str(config))
    assert code == 1 and "no tenant" in err


def test_suppressions(config: Path) -> None:
    cfg = ("--config", str(config))
    code, out, _ = mailgate("suppressions", "add", "Bounced@Example.org", *cfg)
    assert code == 0 and "bounced@example.org suppressed" in out
    code, _, err = mailgate("suppressions", "add", "bounced@example.org", *cfg)
    assert code == 1 and "already suppressed" in err
    code, out, _ = mailgate("suppressions", "list", "--json", *cfg)
    [entry] = json.loads(out)["data"]
    assert (entry["email"], entry["reason"]) == ("bounced@example.org", "manual")
    code, _, err = mailgate("suppressions", "add", "not an address", *cfg)
    assert code == 2
    assert mailgate("suppressions", "list", "--tenant", "other", "--json", *cfg)[1].count("@") == 0
    assert mailgate("suppressions", "remove", "bounced@example.org", *cfg)[0] == 0
    code, _, err = mailgate("suppressions", "remove", "bounced@example.org", *cfg)
    assert code == 1 and "not suppressed" in err
    code, out, _ = mailgate("suppressions", "list", *cfg)
    assert code == 0 and "bounced@" not in out


def test_webhooks(config: Path) -> None:
    cfg = ("--config", str(config))
    code, out, _ = mailgate(
        "webhooks", "create", "--url", "https://hooks.example.com/in",
        "--event", "message.bounced", "--json", *cfg,
    )  # fmt: skip
    assert code == 0
    made = json.loads(out)
    assert made["secret"].startswith("whsec_") and made["events"] == ["message.bounced"]
    code, _, err = mailgate("webhooks", "create", "--url", "ftp://x", *cfg)
    assert code == 2
    code, _, err = mailgate(
        "webhooks", "create", "--url", "https://x.example.com", "--event", "nope", *cfg
    )
    assert code == 2 and "unknown event type" in err
    code, out, _ = mailgate("webhooks", "list", "--json", *cfg)
    assert [w["id"] for w in json.loads(out)["data"]] == [made["id"]]
    code, out, _ = mailgate("webhooks", "test", made["id"], *cfg)
    assert code == 0 and "queued" in out
    code, out, _ = mailgate("webhooks", "deliveries", made["id"], "--json", *cfg)
    [delivery] = json.loads(out)["data"]
    assert delivery["event_type"] == "webhook.test" and delivery["status"] == "pending"
    code, out, _ = mailgate("webhooks", "list", *cfg)
    assert code == 0 and "message.bounced" in out
    code, _, err = mailgate("webhooks", "test", "wh_nope", *cfg)
    assert code == 1 and "no webhook" in err


def test_retry_failed_mail_in_bulk(config: Path, tmp_path: Path) -> None:
    cfg = ("--config", str(config))
    ids = []
    for tag in ("receipts", "receipts", "news"):
        code, out, _ = mailgate("send", "--to", "a@example.org", "-s", "S", "--text", "t",
                                "--tag", tag, "--json", *cfg)  # fmt: skip
        ids.append(json.loads(out)["id"])
    with sqlite3.connect(tmp_path / "mailgate.db") as db:
        db.execute("UPDATE messages SET status = 'failed' WHERE id IN (?, ?)", ids[1:])
    code, out, _ = mailgate("retry", "--tag", "receipts", "--since", "1h", "--dry-run", *cfg)
    assert code == 0 and "1 failed messages match; nothing changed" in out
    code, out, _ = mailgate("retry", "--status", "failed", "--json", *cfg)
    assert code == 0 and json.loads(out) == {"matched": 2, "retried": 2}
    code, out, _ = mailgate("status", ids[2], "--json", *cfg)
    assert json.loads(out)["events"][-1]["type"] == "retried"
    code, out, _ = mailgate("retry", *cfg)
    assert code == 0 and "0 of 0 matching messages queued again" in out
    assert mailgate("retry", "--status", "sent", *cfg)[0] == 2
    assert mailgate("retry", "--since", "yesterday", *cfg)[0] == 2
    code, _, err = mailgate("retry", "--tenant", "nobody", *cfg)
    assert code == 1 and "no tenant" in err
