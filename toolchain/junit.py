"""Sum pytest's JUnit XML reports, for one closing line over several runs."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path


def totals(directory: Path) -> tuple[int, int, int]:
    """(passed, failed, skipped) over every *.xml report in directory."""
    passed = failed = skipped = 0
    for report in sorted(directory.glob("*.xml")):
        p, f, s = totals_of(report)
        passed, failed, skipped = passed + p, failed + f, skipped + s
    return passed, failed, skipped


def totals_of(report: Path) -> tuple[int, int, int]:
    """(passed, failed, skipped) of one report; zeros if it does not exist."""
    passed = failed = skipped = 0
    if report.is_file():
        root = ET.parse(report).getroot()
        for suite in root.iter("testsuite"):
            tests = int(suite.get("tests", 0))
            bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skip = int(suite.get("skipped", 0))
            failed += bad
            skipped += skip
            passed += tests - bad - skip
    return passed, failed, skipped
