"""The shipped systemd units are valid and run commands mailgate accepts."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailgate.cli import app

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
INSTALLED = "/opt/mailgate/.venv/bin/mailgate"


def exec_start(unit: Path) -> list[str]:
    [line] = [s for s in unit.read_text().splitlines() if s.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


@pytest.mark.parametrize("name", ["mailgate.service", "mailgate-worker@.service"])
def test_units_verify(name: str, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    mailgate = Path(sys.executable).with_name("mailgate")
    text = (UNITS / name).read_text().replace(INSTALLED, str(mailgate))
    unit = tmp_path / name.replace("@.", "@1.")
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("name", ["mailgate.service", "mailgate-worker@.service"])
def test_units_run_commands_mailgate_takes(name: str) -> None:
    command = exec_start(UNITS / name)
    assert command[0] == INSTALLED
    result = CliRunner().invoke(app, [*command[1:], "--help"])
    assert result.exit_code == 0, result.output
