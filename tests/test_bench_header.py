"""The one header every benchmark report starts with (benchmarks/suite.py): it states the facts it is given."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from benchmarks import suite

_load = st.lists(st.floats(0.0, 64.0, allow_nan=False), min_size=3, max_size=3).map(
    lambda xs: [round(x, 2) for x in xs])


@given(cpus=st.integers(1, 256), start=_load, end=_load, git=st.from_regex(r"[0-9a-f]{7}", fullmatch=True))
def test_header_lines_hold_every_fact_given(cpus, start, end, git):
    command = "python -m benchmarks scale --images 3"
    text = "\n".join(suite.header_lines(command, cpus=cpus, processor="x86_64", load_start=start, load_end=end,
                                        git=git, date="2026-12-06 13:00 UTC"))
    assert f"Command: `{command}`" in text
    assert f"{cpus} CPUs (x86_64)" in text and f"code {git}" in text and "Date 2026-12-06 13:00 UTC" in text
    at_start = re.search(r"load average (.*) at the start, (.*) at the end", text)
    assert at_start is not None
    assert [float(x) for x in at_start.group(1).split(" / ")] == start
    assert [float(x) for x in at_start.group(2).split(" / ")] == end
    assert "timings are indicative" in text


def test_header_without_a_revision_or_load_says_so_and_invents_nothing():
    lines = suite.header_lines("bench", cpus=2, load_start=1.5)
    assert lines[0] == "Command: `bench`  "
    assert lines[1].startswith("Machine: 2 CPUs, shared with other work")
    assert "1.50 at the start, not recorded at the end" in lines[1]
    assert "code" not in lines[1] and "Date" not in lines[1]


def test_run_and_end_facts_render_through_report_header(monkeypatch):
    monkeypatch.setattr(suite.os, "getloadavg", lambda: (3.0, 2.0, 1.0))
    monkeypatch.setattr(suite, "git_revision", lambda: "abc1234")
    results = {**suite.run_facts("python -m benchmarks x"), "seconds": 1.0}
    monkeypatch.setattr(suite.os, "getloadavg", lambda: (5.0, 4.0, 3.0))
    results.update(suite.end_facts())
    assert results["machine"]["load_average_at_start"] == [3.0, 2.0, 1.0]
    assert results["load_average_at_end"] == [5.0, 4.0, 3.0]
    header = "\n".join(suite.report_header(results))
    assert "`python -m benchmarks x`" in header and "code abc1234" in header
    assert "3.00 / 2.00 / 1.00 at the start, 5.00 / 4.00 / 3.00 at the end" in header
    assert re.search(r"Date \d{4}-\d\d-\d\d \d\d:\d\d UTC", header)


def test_load_average_is_none_where_the_platform_has_none(monkeypatch):
    def missing():
        raise OSError("no load average here")

    monkeypatch.setattr(suite.os, "getloadavg", missing)
    assert suite.load_average() is None
    assert "load_average_at_start" not in suite.machine()
