"""Print a dependency's declared lower bound from setup.py: `python scripts/declared_range.py transformers --lowest`."""

import argparse
import ast
import re
from pathlib import Path


def install_requires(setup_py: Path) -> list[str]:
    """The `install_requires` list of a setup.py, read without running it."""
    for node in ast.walk(ast.parse(setup_py.read_text(encoding="utf-8"))):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return list(ast.literal_eval(node.value))
    raise SystemExit(f"{setup_py} has no install_requires")


def lowest_version(requirements: list[str], name: str) -> str:
    for requirement in requirements:
        if re.match(rf"{re.escape(name)}\s*[<>=!~]", requirement):
            match = re.search(r">=\s*([\w.]+)", requirement)
            if match is None:
                raise SystemExit(f"{requirement!r} declares no lower bound (>=); declare one to test it")
            return match.group(1)
    raise SystemExit(f"setup.py does not declare {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="the distribution, e.g. transformers")
    parser.add_argument("--lowest", action="store_true", required=True, help="print its declared lower bound")
    args = parser.parse_args()
    print(lowest_version(install_requires(Path(__file__).resolve().parents[1] / "setup.py"), args.name))


if __name__ == "__main__":
    main()
