"""`mjp_hf.utils`: the one list-shortening helper for messages, and range-checked command-line numbers."""

import argparse

import pytest

from mjp_hf.utils import bounded, listed


def test_listed_shortens_long_lists_and_says_how_many():
    assert listed([]) == ""
    assert listed(["a", "b"]) == "a, b"
    assert listed(range(4)) == "0, 1, 2, 3"
    assert listed(range(10)) == "0, 1, 2, 3, ... (10 in all)"
    assert listed(("x", "y", "z"), limit=2) == "x, y, ... (3 in all)"


@pytest.mark.parametrize(
    "kind, limits, good, bad",
    [
        (int, dict(minimum=1), ["1", "64"], ["0", "-1", "1.5", "x"]),
        (float, dict(minimum=0, maximum=1), ["0", "0.5", "1"], ["-0.1", "1.01", "nan", "inf"]),
        (float, dict(minimum=0, exclusive_minimum=True), ["0.1", "1e9"], ["0", "-1"]),
    ],
)
def test_bounded_numbers_are_refused_at_parse_time_naming_the_flag(kind, limits, good, bad, capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--value", type=bounded(kind, **limits))
    for text in good:
        assert parser.parse_args(["--value", text]).value == kind(text)
    for text in bad:
        with pytest.raises(SystemExit):
            parser.parse_args(["--value", text])
        error = capsys.readouterr().err
        assert "argument --value:" in error and repr(text) in error, error


def test_bounded_can_accept_none():
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=bounded(int, minimum=1, allow_none=True), default=None)
    assert parser.parse_args(["--limit", "none"]).limit is None and parser.parse_args(["--limit", "3"]).limit == 3


def test_software_versions_names_the_running_python_and_the_installed_torch_and_transformers():
    import platform

    import torch
    import transformers

    from mjp_hf.utils import software_versions

    assert software_versions() == (
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"
    )
