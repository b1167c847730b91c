"""The `python -m <package> <command>` dispatcher shared by preprocess and s2t, and the one error
boundary of every command: a known failure (bad input, damaged file, file system) prints one
`error: ...` line and exits 1; a traceback only for a real bug, or with --debug / S2T_DEBUG=1."""
import errno
import importlib
import os
import sys
import traceback

DEBUG_FLAG = "--debug"
DEBUG_ENV = "S2T_DEBUG"

# Errors that describe a bad input or a damaged file, never a bug: (module, class name). Looked up
# in sys.modules when an error arrives, so the boundary imports nothing (an error class whose
# module was never imported cannot have been raised).
KNOWN_ERRORS = (
    ("preprocess.cli", "CommandError"),
    ("preprocess.manifest", "ManifestError"),
    ("preprocess.store", "CacheError"),
    ("preprocess.keypoint_sources", "SourceError"),
    ("s2t.checkpoint", "CheckpointError"),
    ("s2t.config", "ConfigError"),
    ("s2t.train", "TrainingError"),
    ("s2t.evaluate", "EvaluationError"),
    ("yaml", "YAMLError"),
)

# what to do about a file-system error, by errno
_OS_ADVICE = {
    errno.EACCES: "check its permissions, or choose another folder",
    errno.EPERM: "check its permissions, or choose another folder",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.ENOSPC: "free some disk space and run again (finished work is kept)",
    errno.EDQUOT: "free some of your disk quota and run again (finished work is kept)",
    errno.ENOENT: "check the path",
    errno.ELOOP: "a symbolic link on the path points back at itself: fix or remove it",
    errno.ENOTDIR: "a file is where a folder is expected: check the path",
    errno.EISDIR: "a folder is where a file is expected: check the path",
    errno.EEXIST: "something is already there: check the path",
    errno.ENAMETOOLONG: "use a shorter path",
}


class CommandError(ValueError):
    """A bad setting or input that the message alone explains (no traceback)."""


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def is_known(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return True
    classes = [getattr(sys.modules[m], name, None) for m, name in KNOWN_ERRORS if m in sys.modules]
    return isinstance(e, tuple(c for c in classes if isinstance(c, type)))


def describe(e: BaseException) -> str:
    """The message of a known error; file-system errors get where, why and what to do."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "") if e.filename else None
        why = f"{e.strerror} ({errno.errorcode.get(e.errno, e.errno)})"
        advice = _OS_ADVICE.get(e.errno, "check the path and the file system")
        return f"{where}: {why}; {advice}" if where else f"{why}; {advice}"
    return str(e) or type(e).__name__


def report_error(e: BaseException) -> int:
    """Print a known error as one `error:` line (a traceback first in debug mode); returns exit code 1."""
    if debug_enabled():
        traceback.print_exception(e)
    print(f"error: {describe(e)}", file=sys.stderr)
    return 1


def dispatch(prog: str, commands: dict[str, tuple[str, str]], argv=None) -> int:
    """Run commands[argv[0]]'s module `main(argv[1:])`; modules are imported only when chosen,
    so `inspect` never pays for torch and `train` never for mediapipe."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if DEBUG_FLAG in argv:  # any position: `s2t --debug train ...` and `s2t train ... --debug`
        argv = [a for a in argv if a != DEBUG_FLAG]
        os.environ[DEBUG_ENV] = "1"  # also seen by worker processes and by mains that report errors
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(f"usage: {prog} [{DEBUG_FLAG}] {{{','.join(commands)}}} [--help] ...")
        for name, (_, doc) in commands.items():
            print(f"  {name:10s} {doc}")
        print(f"  {DEBUG_FLAG} (or {DEBUG_ENV}=1): show the traceback of an error, not only its message")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        module = importlib.import_module(commands[argv[0]][0])
        return module.main(argv[1:]) or 0
    except Exception as e:
        if not is_known(e):
            raise  # a bug: the full traceback, exit 1
        return report_error(e)
