"""How a benchmark run as a file (`python benchmarks/X.py`) imports its neighbours: as the package `benchmarks`, the
way `python -m benchmarks.X` does, without touching `sys.path`.

Each script opens with PEP 366's boilerplate, `if not __package__: __package__ = __import__("_package").package()`:
a script run as a file has no package, and only its own folder on `sys.path` (so this module is importable by its
bare name). `package()` imports this folder as `benchmarks` and the script's relative imports then resolve in it.
"""

import importlib.util
import os
import sys


FOLDER = os.path.dirname(os.path.abspath(__file__))
NAME = "benchmarks"


def package() -> str:
    """Import this folder as the package `benchmarks` (once) and return its name, for `__package__`."""
    loaded = sys.modules.get(NAME)
    if loaded is None:
        spec = importlib.util.spec_from_file_location(
            NAME, os.path.join(FOLDER, "__init__.py"), submodule_search_locations=[FOLDER]
        )
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[NAME] = loaded
        spec.loader.exec_module(loaded)
    elif FOLDER not in [os.path.abspath(path) for path in getattr(loaded, "__path__", [])]:
        # opacus, for one, installs a top-level `benchmarks` package of its own.
        raise ImportError(
            f"Another package named {NAME!r} ({loaded.__path__}) is imported already; run the script with "
            f"`python -m {NAME}.<script>` from the repository root instead."
        )
    return NAME
