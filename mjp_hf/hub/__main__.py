"""`python -m mjp_hf.hub card|layout|push ...`: the command-line tools of `mjp_hf.hub.publish`."""

from .publish import main


main()
