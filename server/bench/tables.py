"""The docs' bench tables, written from `chatdock bench --json` files kept in the repository (docs/bench/).

A table in a docs page sits between two markers naming its file:

    <!-- bench: bench/sqlite-1m.json -->
    ... (written by this module; do not edit) ...
    <!-- /bench -->

Several files make one table of the runs' medians, with their spread (`bench: a.json b.json c.json`); the
`bench-scale:` marker puts runs at different sizes side by side, with the growth from the smallest to the
largest (`bench-scale: 100k.json 1m.json 10m.json`).

`python -m chatdock.server.bench.tables docs/*.md` rewrites every such table from its file (a path relative to
the page); tests/test_docs.py fails when a page and its file disagree, so each figure is written once, by the
bench, and a hand-edited one does not pass.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

BLOCK = re.compile(r"(<!-- bench(?P<scale>-scale)?: (?P<files>[^>]+?) -->\n)(?P<table>.*?)(<!-- /bench -->)", re.DOTALL)


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


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _rows_by_name(reports: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[dict[str, Any] | None]]]:
    """Each row of the first report, with the same row of every report (None where a run lacks it)."""
    found = [{row["name"]: row for row in report["rows"]} for report in reports]
    return [(row, [each.get(row["name"]) for each in found]) for row in reports[0]["rows"]]


def _runs_line(reports: list[dict[str, Any]]) -> str:
    first = reports[0]
    dates = sorted({str(report.get("date", "date not recorded")) for report in reports})
    return (
        f"{len(reports)} runs of `chatdock bench --messages {first['messages']} --contacts {first['contacts']} "
        f"--rounds {first['rounds']}{first.get('options', '')}`: {', '.join(dates)}, "
        f"{first.get('machine', 'machine not recorded')}; each figure the median of the runs (each run's figure "
        "the median of its rounds), the spread the lowest and highest run."
    )


def render_runs(reports: list[dict[str, Any]]) -> str:
    """Several runs of the same bench as one table: the median of each figure and its spread."""
    lines = [
        _runs_line(reports),
        "",
        "| measure | value | spread | unit | vs floor | goal | met |",
        "|---|---:|---:|---|---:|---|---|",
    ]
    section = ""
    for row, runs in _rows_by_name(reports):
        if row.get("section", "") != section:
            section = row["section"]
            lines.append(f"| **{section}** | | | | | | |")
        seen = [run for run in runs if run is not None]
        values = [run["value"] for run in seen]
        ratios = [run["ratio"] for run in seen if run.get("ratio") is not None]
        verdicts = [run["met"] for run in seen if run.get("met") is not None]
        spread = f"{_number(min(values))} - {_number(max(values))}"
        ratio = f"{_median(ratios):.2f}x" if ratios else ""
        met = ""
        if verdicts:
            held = sum(verdicts)
            met = "yes" if held == len(verdicts) else ("**NO**" if held == 0 else f"{held} of {len(verdicts)} runs")
        name = row["name"].replace("|", "\\|")
        goal = row.get("goal", "")
        lines.append(f"| {name} | {_number(_median(values))} | {spread} | {row['unit']} | {ratio} | {goal} | {met} |")
    return "\n".join(lines) + "\n"


def render_scale(reports: list[dict[str, Any]]) -> str:
    """Runs at different sizes side by side: each figure at each size, and the largest over the smallest."""
    sizes = [f"{report['messages']:,}" for report in reports]
    lines = [
        "Each figure at "
        + ", ".join(sizes)
        + " messages ("
        + "; ".join(
            f"{report['messages']:,}: {report.get('date', 'date not recorded')}, {report['rounds']} rounds"
            for report in reports
        )
        + f"; {reports[0].get('machine', 'machine not recorded')}), and the figure at the largest size over the "
        "figure at the smallest.",
        "",
        "| measure | " + " | ".join(sizes) + " | unit | largest / smallest |",
        "|---|" + "---:|" * len(sizes) + "---|---:|",
    ]
    for row, runs in _rows_by_name(reports):
        cells = ["" if run is None else _number(run["value"]) for run in runs]
        growth = ""
        if runs[0] is not None and runs[-1] is not None and runs[0]["value"]:
            growth = f"{runs[-1]['value'] / runs[0]['value']:.2f}x"
        name = row["name"].replace("|", "\\|")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['unit']} | {growth} |")
    return "\n".join(lines) + "\n"


def rewrite(page: Path) -> str:
    """The page with each of its bench tables written anew from its files."""

    def table(found: re.Match[str]) -> str:
        reports = [json.loads((page.parent / name).read_text()) for name in found["files"].split()]
        if found["scale"]:
            written = render_scale(reports)
        else:
            written = render(reports[0]) if len(reports) == 1 else render_runs(reports)
        return found.group(1) + written + found.group(5)

    return BLOCK.sub(table, page.read_text())


def main(pages: list[str]) -> int:
    for name in pages:
        page = Path(name)
        page.write_text(rewrite(page))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
