"""``python -m vislib.grading report COURSE``: after ``make autograde``, what the instructor should
look at: each submission's score, the submissions with failures (a cell stopped for time, an exit,
a grader error) and those flagged in ``integrity.csv``. Flags are not verdicts: read the cells."""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path

from vislib.grading.autograde import REPORT


def report(course: Path) -> str:
    lines = []
    grades = course / "grades.csv"
    if grades.exists():
        with grades.open() as f:
            rows = list(csv.DictReader(f))
        lines.append(f"{len(rows)} graded submissions ({grades}):")
        for r in rows:
            score, maximum = float(r["score"]), float(r["max_score"])
            lines.append(f"  {r['student_id']:<24} {r['assignment']:<14} {score:5.1f} / {maximum:.0f}")
    flagged = defaultdict(list)
    path = course / REPORT
    if path.exists():
        with path.open() as f:
            for row in csv.DictReader(f):
                flagged[(row["student"], row["assignment"])].append(row)
    if not flagged:
        lines.append("nothing to report: no failures, no restored or changed cells, no flags")
    for (student, assignment), rows in sorted(flagged.items()):
        lines.append(f"{student} / {assignment}:")
        lines += [f"  [{r['kind']}] {r['cell']}: {r['reason']}" for r in rows]
    if flagged:
        lines.append(f"({len(flagged)} submissions listed; the rows are in {path})")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "report":
        sys.exit("usage: python -m vislib.grading report COURSE")
    print(report(Path(sys.argv[2])))
