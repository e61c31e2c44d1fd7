"""Side by side: one suite on our core, on hvisor-tool's daemon, and on HEAD's own device.

Reads pytest's JUnit reports and lines test cases up by test and parameters
(the ``spec@target@transport`` part of the id taken out), so that each row
says what each column's device did with the same case.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

DUT_ID = re.compile(
    r"(?P<spec>[\w.-]+)@(?P<target>[\w-]+)@(?P<transport>vhost-user|hvisor-tool|hvisor|upstream)"
)


def outcome(case: ET.Element) -> str:
    """passed, failed, skipped, xfailed (pytest's xfail shows as a skip of type xfail)."""
    for child in case:
        if child.tag in {"failure", "error"}:
            return "failed"
        if child.tag == "skipped":
            return "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
    return "passed"


def collect(reports: list[Path]) -> dict[tuple[str, str], dict[str, str]]:
    """(file::test, params) -> {column: outcome}; column = 'transport/target'."""
    rows: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for report in reports:
        for case in ET.parse(report).getroot().iter("testcase"):
            name = case.get("name", "")
            if "[" not in name:
                continue
            base, params = name.split("[", 1)
            params = params.rstrip("]")
            m = DUT_ID.search(params)
            if m is None:
                continue
            rest = (params[: m.start()] + params[m.end() :]).strip("-")
            test = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{base}"
            column = f"{m['transport']}/{m['target']}"
            rows[(test, rest)][column] = outcome(case)
    return rows


MARK = {"passed": "pass", "failed": "**FAIL**", "skipped": "skip", "xfailed": "xfail", "": "-"}


def table(rows: dict[tuple[str, str], dict[str, str]], columns: list[str]) -> str:
    """Markdown: counts per column, then every row where the columns disagree."""
    out = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for kind in ("passed", "failed", "xfailed", "skipped"):
        counts = [sum(1 for r in rows.values() if r.get(c) == kind) for c in columns]
        out.append(f"| {kind} | " + " | ".join(str(n) for n in counts) + " |")
    out += [
        "",
        "| test | case | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for (test, case), got in sorted(rows.items()):
        values = [got.get(c, "") for c in columns]
        if len({v for v in values if v}) > 1:
            out.append(
                f"| `{test}` | {case or '-'} | " + " | ".join(MARK[v] for v in values) + " |"
            )
    return "\n".join(out) + "\n"
