"""`python -m preprocess <command> ...` — features, inspect, synthetic."""
import sys

from preprocess.cli import dispatch

COMMANDS = {
    "features": ("preprocess.features", "extract keypoints + tokenize text into a sealed cache"),
    "inspect": ("preprocess.inspect", "show what a cache holds (--json for machines)"),
    "synthetic": ("preprocess.synthetic", "generate the built-in synthetic sign corpus"),
}


def main(argv=None) -> int:
    return dispatch("python -m preprocess", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
