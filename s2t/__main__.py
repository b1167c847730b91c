"""`python -m s2t <command> ...` — train, eval, compare, translate."""
import sys

from preprocess.cli import dispatch

COMMANDS = {
    "train": ("s2t.train", "train a model on a feature cache"),
    "eval": ("s2t.evaluate", "evaluate a run on a split: collapse metrics, retrieval, WER/BLEU, plots"),
    "compare": ("s2t.compare", "compare runs side by side"),
    "translate": ("s2t.translate", "translate a video / .pose / .npy file with a trained run"),
}


def main(argv=None) -> int:
    return dispatch("python -m s2t", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
