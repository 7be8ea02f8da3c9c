"""``python -m hclib.train fit --config configs/gpt-tiny.yaml``: train a GPT from a recipe.

See :mod:`hclib.training.cli` for the keys and ``configs/`` for the recipes.
"""

from hclib.training.cli import main

if __name__ == "__main__":
    main()
