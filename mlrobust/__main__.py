"""``python -m mlrobust``: the same command line as the ``mlrobust`` console script."""

from mlrobust.cli import console

if __name__ == "__main__":
    console()
