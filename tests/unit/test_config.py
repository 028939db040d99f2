from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailgate.config import MailgunSettings, SendGridSettings, Settings, load_settings
from mailgate.errors import ConfigError

CONFIG = """
[server]
host = "0.0.0.0"
port = 9000
[database]
url = "sqlite:///var/mailgate.db"
[delivery]
concurrency = 50
attempt_timeout_seconds = 5
[[providers]]
name = "primary"
type = "sendgrid"
api_key = "SG.real"
priority = 1
[[providers]]
name = "backup"
type = "mailgun"
api_key = "key-real"
domain = "mg.example.com"
base_url = "https://api.eu.mailgun.net"
priority = 2
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailgate.toml"
    path.write_text(text)
    return path


def test_reads_every_section(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, CONFIG), environ={})
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 9000)
    assert settings.delivery.concurrency == 50 and settings.delivery.retry_initial_seconds == 30
    primary, backup = settings.providers
    assert isinstance(primary, SendGridSettings) and primary.base_url == "https://api.sendgrid.com"
    assert isinstance(backup, MailgunSettings) and backup.domain == "mg.example.com"
    assert backup.api_key.get_secret_value() == "key-real"
    assert "key-real" not in repr(settings)
    assert not settings.simulated


def test_defaults_simulate_providers() -> None:
    settings = load_settings(None, environ={})
    assert settings.simulated and settings.server.port == 8025
    assert settings.database.url == "sqlite:///.mailgate/mailgate.db"


def test_the_config_path_can_come_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, CONFIG)
    settings = load_settings(None, environ={"MAILGATE_CONFIG": str(path)})
    assert settings.server.port == 9000


def test_variables_override_the_file(tmp_path: Path) -> None:
    # A child process, so this process's environment stays untouched.
    path = write(tmp_path, CONFIG)
    env = {
        **os.environ,
        "MAILGATE_CONFIG": str(path),
        "MAILGATE_SERVER__PORT": "9100",
        "MAILGATE_DELIVERY__CONCURRENCY": "7",
    }
    code = "from mailgate.config import load_settings; s = load_settings(); "
    code += "print(s.server.port, s.server.host, s.delivery.concurrency, len(s.providers))"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["9100", "0.0.0.0", "7", "2"]


def test_tests_build_settings_directly() -> None:
    settings = Settings(server={"port": 1})
    assert settings.server.port == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nbogus = 1\n", "server.bogus: unknown key (MAILGATE_SERVER__BOGUS)"),
        ("[nonsense]\nx = 1\n", "nonsense: unknown key"),
        ("[delivery]\nconcurrency = 0\n", "delivery.concurrency"),
        (
            '[[providers]]\nname = "p"\ntype = "mailgun"\napi_key = "k"\n',
            "providers[0].domain (provider 'p'): Field required",
        ),
        (
            '[[providers]]\nname = "p"\ntype = "sendgrid"\napi_key = "changeme"\n',
            "providers[0].api_key (provider 'p'): Value error, is a placeholder",
        ),
        ('[[providers]]\nname = "p"\ntype = "carrier-pigeon"\n', "providers[0]"),
        (
            '[[providers]]\nname = "Bad Name"\ntype = "sendgrid"\napi_key = "k"\n',
            "providers[0].name",
        ),
        (
            '[[providers]]\nname = "p"\ntype = "sendgrid"\napi_key = "k"\n' * 2,
            "provider name 'p' is used twice",
        ),
        ("not toml at all [", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ={})
    assert expected in str(info.value)


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_config_error_is_not_a_mailgate_error() -> None:
    from mailgate.errors import MailgateError

    assert not issubclass(ConfigError, MailgateError)
