"""The model card, the local publishing layout, or a push to the Hub, of a training run's output folder.

    python -m mjp_hf.hub card|layout|push --run_dir OUT ...

`OUT` is the output folder of `examples/run_image_classification.py`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from huggingface_hub import ModelCard

from .card import DEFAULT_LICENSE, repo_id_argument
from .files import check_output_dir, layout_files, write_file
from .layout import push_mjp_model, save_publishing_layout
from .runs import card_for_run, load_run


PROG = "python -m mjp_hf.hub"


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    card = commands.add_parser("card", help="write the model card of a training run's output folder")
    card.add_argument("--run_dir", required=True, help="output folder of examples/run_image_classification.py")
    card.add_argument(
        "--model_id", required=True, type=repo_id_argument, help="Hub repository id the card describes (org/name)"
    )
    card.add_argument("--output", required=True, help="where to write the card, e.g. model_cards/mjp-vit-demo.md")
    card.add_argument("--overwrite", action="store_true", help="replace an existing card file")

    push = commands.add_parser("push", help="push a training run's output folder in the publishing layout")
    push.add_argument("--run_dir", required=True)
    push.add_argument("--hub_model_id", required=True, type=repo_id_argument)
    push.add_argument("--hub_token", default=None, help="defaults to the token of `hf auth login` / HF_TOKEN")
    push.add_argument("--hub_private_repo", action="store_true")
    push.add_argument("--card", default=None, help="a card file to publish instead of the generated one")

    layout = commands.add_parser("layout", help="write the publishing layout of a training run to a local folder")
    layout.add_argument("--run_dir", required=True)
    layout.add_argument("--output_dir", required=True)
    layout.add_argument("--model_id", required=True, type=repo_id_argument)
    layout.add_argument("--overwrite", action="store_true")

    for sub in (card, push, layout):
        sub.add_argument("--dataset_name", default=None, help="Hub id of the dataset (for the model-index)")
        sub.add_argument("--dataset_split", default=None)
        sub.add_argument("--base_model", default=None)
        sub.add_argument("--license", default=DEFAULT_LICENSE)
    return parser.parse_args(argv)


def _write_card(args, run_dir: Path, card_kwargs: dict) -> None:
    output = Path(args.output)
    if output.resolve() == (run_dir / "README.md").resolve():
        raise ValueError(
            f"--output {output} is the run folder's own card, which describes the folder as it is; write the card to "
            "publish elsewhere, e.g. model_cards/<name>.md."
        )
    if output.is_dir():  # before loading anything
        raise IsADirectoryError(f"--output {output} is a folder; pass a file path, e.g. {output / 'model_card.md'}.")
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"--output {output} exists; pass --overwrite to replace it.")
    card = card_for_run(run_dir, model_id=args.model_id, **card_kwargs)
    write_file(
        output, str(card).encode("utf-8"), overwrite=args.overwrite, flag="--output", overwrite_flag="--overwrite"
    )
    print(f"Wrote {output}")


def main(argv=None) -> None:
    """The command line. Errors are raised (`run_command`, behind `python -m`, prints them as one line)."""
    args = _parse_args(argv)
    run_dir = Path(args.run_dir)
    card_kwargs = dict(
        dataset_name=args.dataset_name,
        dataset_split=args.dataset_split,
        base_model=args.base_model,
        license=args.license,
    )
    if args.command == "card":
        return _write_card(args, run_dir, card_kwargs)
    if args.command == "layout":  # before loading anything
        check_output_dir(
            args.output_dir,
            overwrite=args.overwrite,
            inputs={"--run_dir": run_dir},
            output_flag="--output_dir",
            overwrite_flag="--overwrite",
        )
    model, image_processor = load_run(run_dir)
    model_id = args.hub_model_id if args.command == "push" else args.model_id
    if getattr(args, "card", None):
        card = ModelCard.load(args.card)
    else:
        card = card_for_run(run_dir, model_id=model_id, model=model, **card_kwargs)
    if args.command == "layout":
        folder = save_publishing_layout(model, image_processor, args.output_dir, card=card, overwrite=args.overwrite)
        print(f"Wrote {folder}: " + ", ".join(layout_files(folder)))
        return
    url = push_mjp_model(
        model, image_processor, model_id, card=card, token=args.hub_token, private=args.hub_private_repo or None
    )
    print(f"Pushed {run_dir} to {model_id}: {url}")


def run_command(argv=None) -> None:
    """`python -m mjp_hf.hub`: `main`, with SIGTERM handled like Ctrl-C (what was half-built is removed, a folder
    being overwritten gets its earlier files back) and errors printed as one line."""
    received = []

    def stop(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if in_main_thread else None
    try:
        main(argv)
    except KeyboardInterrupt:
        signum = received[0] if received else signal.SIGINT
        print(f"{PROG}: stopped by {signal.Signals(signum).name}; nothing was left half-written.", file=sys.stderr)
        raise SystemExit(128 + signum) from None
    except (ValueError, OSError, TypeError) as error:
        raise SystemExit(f"{PROG}: {error}") from None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
