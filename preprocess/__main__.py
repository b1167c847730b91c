"""`python -m preprocess <command> ...` — features, inspect, synthetic."""
import importlib
import sys

COMMANDS = {
    "features": ("preprocess.features", "extract keypoints + tokenize text into a sealed cache"),
    "inspect": ("preprocess.inspect", "show what a cache holds (--json for machines)"),
    "synthetic": ("preprocess.synthetic", "generate the built-in synthetic sign corpus"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m preprocess {%s} [--help] ..." % ",".join(COMMANDS))
        for name, (_, doc) in COMMANDS.items():
            print(f"  {name:10s} {doc}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
