"""`python -m mjp_hf.hub card|layout|push ...`: the command-line tools of `mjp_hf.hub.cli`."""

from .cli import run_command


run_command()
