"""``python -m pretrain --config NAME --out DIR ...`` = ``jepa-eval pretrain ...``."""
import sys

from jepa_eval.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
