"""Small helpers every part of the package shares: message text (`listed`, `software_versions`), range-checked command-line numbers
(`in_range`, `bounded`) and the check of a `--model_name_or_path` before anything loads (`model_source`, imported on
its own: it reads safetensors)."""

from .arguments import bounded, in_range
from .text import listed, software_versions


__all__ = ["bounded", "in_range", "listed", "software_versions"]
