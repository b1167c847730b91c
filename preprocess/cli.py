"""The `python -m <package> <command>` dispatcher shared by preprocess and s2t."""
import importlib
import sys


def dispatch(prog: str, commands: dict[str, tuple[str, str]], argv=None) -> int:
    """Run commands[argv[0]]'s module `main(argv[1:])`; modules are imported only when chosen,
    so `inspect` never pays for torch and `train` never for mediapipe."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(f"usage: {prog} {{{','.join(commands)}}} [--help] ...")
        for name, (_, doc) in commands.items():
            print(f"  {name:10s} {doc}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(commands[argv[0]][0])
    return module.main(argv[1:]) or 0
