"""The docs say what the code does: the README is a front door that links every page, each bench figure is
written from its run's JSON (a hand-edited one fails here), and the documented tools and routes are the
registered ones."""

from __future__ import annotations

import re
from pathlib import Path

from mcp.client import Client

from chatdock.server.bench.tables import BLOCK, render_runs, render_scale, rewrite
from chatdock.server.http.rest import build_rest
from chatdock.server.mcp.app import Settings, build_server
from chatdock.server.mcp.events import Events

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_the_readme_is_a_front_door_that_links_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    linked = set(re.findall(r"\]\((docs/[^)#]+\.md)\)", readme))
    pages = {str(page.relative_to(ROOT)) for page in DOCS.glob("*.md")}
    assert linked == pages, f"pages not linked: {pages - linked}; links to no page: {linked - pages}"


def test_every_link_between_pages_names_a_page_that_exists() -> None:
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_every_bench_table_is_what_its_run_says() -> None:
    tables = 0
    for page in DOCS.glob("*.md"):
        text = page.read_text()
        tables += len(BLOCK.findall(text))
        assert rewrite(page) == text, (
            f"{page.name}: a bench table differs from its JSON; run "
            "`python -m chatdock.server.bench.tables docs/*.md` instead of editing a figure"
        )
    assert tables >= 1


async def test_the_documented_tools_are_the_registered_ones() -> None:
    table = (DOCS / "reference.md").read_text().split("## Tools", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
    async with Client(build_server(Settings())) as client:
        registered = {tool.name for tool in (await client.list_tools()).tools}
    assert documented == registered


def test_the_documented_routes_are_the_registered_ones() -> None:
    table = (DOCS / "rest.md").read_text().split("| route | what |", 1)[1].split("\n\n", 1)[0]
    documented = set(re.findall(r"`(GET|POST|PATCH|DELETE|PUT) (/[^`]*)`", table))
    app = build_rest(lambda: None, read_only=False, events=Events())  # type: ignore[arg-type,return-value]
    registered = {
        (method, route.path)  # type: ignore[attr-defined]
        for route in app.routes
        for method in getattr(route, "methods", None) or ()
        if method != "HEAD"
    }
    assert documented == registered


def test_every_python_snippet_in_the_docs_is_python() -> None:
    """Each snippet compiles (top-level `await` allowed, as in a notebook or an async REPL); the runnable
    programs they come from are in examples/, which tests/test_examples.py runs."""
    import ast

    snippets = 0
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for snippet in re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL):
            compile(snippet, f"{page.name} snippet", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            snippets += 1
    assert snippets >= 3


def test_several_runs_make_one_table_of_medians_with_their_spread_and_sizes_one_of_growth() -> None:
    def report(messages: int, value: float, met: bool) -> dict[str, object]:
        row = {"name": "append", "value": value, "unit": "msg/s", "ratio": value / 10, "goal": ">= 0.2x", "met": met}
        return {"messages": messages, "contacts": 10, "rounds": 3, "date": "2026-12-05", "machine": "m", "rows": [row]}

    runs = render_runs([report(1000, 1.0, False), report(1000, 3.0, True), report(1000, 2.0, True)])
    assert runs.startswith("3 runs of `chatdock bench --messages 1000 --contacts 10 --rounds 3`: 2026-12-05, m;")
    assert "| append | 2.000 | 1.000 - 3.000 | msg/s | 0.20x | >= 0.2x | 2 of 3 runs |" in runs
    scale = render_scale([report(1000, 4.0, True), report(100_000, 6.0, True)])
    assert "| append | 4.000 | 6.000 | msg/s | 1.50x |" in scale and "| measure | 1,000 | 100,000 |" in scale
