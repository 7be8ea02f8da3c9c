"""``python -m hclib.train fit --config configs/gpt-tiny.yaml``: train a GPT from a recipe.

See :mod:`hclib.training.cli` for the keys and ``configs/`` for the recipes. It needs the
``train`` extra (``pip install 'hclib[train]'``); without it the command says so and exits.
"""

import sys

from hclib.extras import MissingExtraError, require

if __name__ == "__main__":
    try:
        for package in ("pytorch_lightning", "jsonargparse", "tensorboard"):
            require(package, "train", "python -m hclib.train")
    except MissingExtraError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)

    from hclib.training.cli import main

    main()
