"""The docs' bench tables, written from `chatdock bench --json` files kept in the repository (docs/bench/).

A table in a docs page sits between two markers naming its file:

    <!-- bench: bench/sqlite-1m.json -->
    ... (written by this module; do not edit) ...
    <!-- /bench -->

`python -m chatdock.server.bench.tables docs/*.md` rewrites every such table from its file (a path relative to
the page); tests/test_docs.py fails when a page and its file disagree, so each figure is written once, by the
bench, and a hand-edited one does not pass.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

BLOCK = re.compile(r"(<!-- bench: (?P<file>\S+) -->\n)(?P<table>.*?)(<!-- /bench -->)", re.DOTALL)


def _number(value: float) -> str:
    return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"


def render(report: dict[str, Any]) -> str:
    """One bench run as a markdown table, under a line saying when, where and how much."""
    machine = report.get("machine", "machine not recorded")
    lines = [
        f"`chatdock bench --messages {report['messages']} --contacts {report['contacts']} "
        f"--rounds {report['rounds']}{report.get('options', '')}`: {report.get('date', 'date not recorded')}, "
        f"{machine}; each figure the median of the run's rounds.",
        "",
        "| measure | value | unit | vs floor | goal | met |",
        "|---|---:|---|---:|---|---|",
    ]
    section = ""
    for row in report["rows"]:
        if row.get("section", "") != section:
            section = row["section"]
            lines.append(f"| **{section}** | | | | | |")
        ratio = f"{row['ratio']:.2f}x" if row.get("ratio") is not None else ""
        met = "" if row.get("met") is None else ("yes" if row["met"] else "**NO**")
        name = row["name"].replace("|", "\\|")
        lines.append(f"| {name} | {_number(row['value'])} | {row['unit']} | {ratio} | {row.get('goal', '')} | {met} |")
    return "\n".join(lines) + "\n"


def rewrite(page: Path) -> str:
    """The page with each of its bench tables written anew from its file."""

    def table(found: re.Match[str]) -> str:
        report = json.loads((page.parent / found["file"]).read_text())
        return found.group(1) + render(report) + found.group(4)

    return BLOCK.sub(table, page.read_text())


def main(pages: list[str]) -> int:
    for name in pages:
        page = Path(name)
        page.write_text(rewrite(page))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
