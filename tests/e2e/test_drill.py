"""The failover drill (bench/drill.py) runs, moves traffic, and loses or doubles nothing."""

from __future__ import annotations

import pytest
from bench.drill import PHASES, run

pytestmark = pytest.mark.slow


async def test_the_drill_moves_traffic_and_loses_nothing() -> None:
    report = await run("sqlite", rate=40, seconds=1.5, quiet=True)
    assert [p.name for p in report.phases] == [name for name, _, _ in PHASES]
    assert all(p.accepted > 0 for p in report.phases)
    assert report.lost == 0 and report.doubles == 0
    by_name = {p.name: p for p in report.phases}
    # A failing or switched-off primary: the backup carries the traffic at once.
    for name in ("primary answers 503", "primary disabled by the operator"):
        assert by_name[name].via["backup"] > 0 and by_name[name].on_target_after is not None
    assert by_name["both healthy"].via["backup"] == 0
    assert "lost 0, sent twice 0" in report.table()
