"""The benchmarks, a package: `python -m benchmarks.data_loading` and `python benchmarks/data_loading.py` both run a
script (see `_package` for the second), and tests import them as `benchmarks.<name>`."""
