"""`python -m s2t <command> ...` — train, eval, compare, translate."""
import importlib
import sys

COMMANDS = {
    "train": ("s2t.train", "train a model on a feature cache"),
    "eval": ("s2t.evaluate", "evaluate a run on a split: collapse metrics, retrieval, WER/BLEU, plots"),
    "compare": ("s2t.compare", "compare runs side by side"),
    "translate": ("s2t.translate", "translate a video / .pose / .npy file with a trained run"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m s2t {%s} [--help] ..." % ",".join(COMMANDS))
        for name, (_, doc) in COMMANDS.items():
            print(f"  {name:10s} {doc}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
