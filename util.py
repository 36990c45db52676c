"""Shared helpers: the bad-input error and CLI wrapper, metrics, seeding, atomic checkpoint I/O,
batching and logging."""
import os
import sys
import tempfile


class UsageError(Exception):
    """Bad input from the user (a file, a line, a flag): one clear message, exit code 2."""


def run_cli(main) -> None:
    """Run a command's main(): UsageError -> its message on stderr and exit 2, no traceback."""
    try:
        code = main()
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def atomic_write(path: str, write) -> None:
    """Call write(tmp_path), then rename tmp_path to path, so a crash never leaves a half file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
