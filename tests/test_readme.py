"""Every Python snippet in README.md runs as pasted."""

import re
from pathlib import Path

import pytest


README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)


def test_the_readme_has_python_snippets():
    assert SNIPPETS


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"snippet-{i}" for i in range(len(SNIPPETS))])
def test_a_readme_snippet_runs_as_pasted(snippet, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what a snippet saves lands here
    exec(compile(snippet, f"README.md python snippet in {tmp_path}", "exec"), {"__name__": "__readme__"})
