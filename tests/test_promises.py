"""The docs point to the tests that keep their promises (docs/PROMISES.md above all): every test they name exists,
every promise in docs/PROMISES.md names at least one test and a place in the docs that exists, and the README links
the page."""

import ast
import re
from functools import cache
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
PROMISES = ROOT / "docs" / "PROMISES.md"
# The docs whose tests are checked here (docs/PRIVACY.md and docs/study/ are not covered yet: docs/PROMISES.md).
DOCS = (
    "README.md",
    "docs/TRAINING.md",
    "docs/HUB.md",
    "docs/METHOD.md",
    "docs/UPSTREAM_ISSUES.md",
    "docs/PROMISES.md",
    "benchmarks/README.md",
)
NODE_ID = re.compile(r"(tests/test_\w+\.py)::(\w+)")


@cache
def _test_functions(path: str) -> frozenset[str]:
    """The names of the module's top-level test functions (parsed, not imported: a name in a comment or a string
    does not count)."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    return frozenset(
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    )


def _missing(text: str) -> list[str]:
    return [
        f"{path}::{name}"
        for path, name in NODE_ID.findall(text)
        if not (ROOT / path).is_file() or name not in _test_functions(path)
    ]


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def _anchors(path: str) -> frozenset[str]:
    text = (ROOT / path).read_text(encoding="utf-8")
    headings = {_slug(match) for match in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}
    return frozenset(headings | set(re.findall(r'<a id="([\w-]+)"></a>', text)))


def _rows(text: str) -> list[list[str]]:
    """The cells of every table row of docs/PROMISES.md but the headers and separators."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("| promise ") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


@pytest.mark.parametrize("doc", DOCS)
def test_every_test_a_doc_names_exists(doc):
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert _missing(text) == [], f"{doc} names tests that do not exist"


def test_the_pages_that_name_tests_still_do():
    """The check above has something to check (a lost `::` would leave it nothing)."""
    for doc, least in {"docs/TRAINING.md": 3, "docs/UPSTREAM_ISSUES.md": 3, "docs/PROMISES.md": 120}.items():
        assert len(set(NODE_ID.findall((ROOT / doc).read_text(encoding="utf-8")))) >= least, doc


def test_every_promise_names_where_it_is_made_and_the_tests_that_try_to_break_it():
    rows = _rows(PROMISES.read_text(encoding="utf-8"))
    assert len(rows) >= 60
    for promise, where, tests in rows:
        assert promise, (where, tests)
        for place in where.split(", "):
            path, _, anchor = re.sub(r" \(issue \d\)$", "", place).partition("#")
            assert (ROOT / path).is_file(), (promise, place)
            assert not anchor or anchor in _anchors(path), (promise, place, sorted(_anchors(path)))
        named = tests.split(", ")
        assert named and all(NODE_ID.fullmatch(test) for test in named), (promise, tests)
        assert _missing(tests) == [], promise


def test_the_readme_links_the_promises_among_its_documentation():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    documentation = readme.split("\n## Documentation\n", 1)[1].split("\n## ", 1)[0]
    assert "- [docs/PROMISES.md](docs/PROMISES.md)" in documentation
