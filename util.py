"""Helpers without MindSpore: the bad-input error and the CLI wrapper, messages and progress bars
(silent under --quiet), Ctrl-C as an event, atomic file writes, metrics and batching.
(ms_util.py holds the helpers that need MindSpore.)
"""
import json
import os
import signal
import sys
import tempfile
import threading

import numpy as np
from tqdm import tqdm

# --quiet (or a worker other than the main one under msrun) silences messages and bars
quiet = False


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


def ctrl_c_event() -> threading.Event:
    """Ctrl-C as an event the training loop checks between steps.

    MindSpore's runtime installs its own SIGINT handler, which ends the process at once; with
    SIGINT blocked in every thread started from here on, a watcher thread receives it instead.
    A second Ctrl-C quits immediately."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    requested = threading.Event()

    def watch():
        signal.sigwait({signal.SIGINT})
        requested.set()
        log("Ctrl-C: stopping after this step (press again to quit at once)", always=True)
        signal.sigwait({signal.SIGINT})
        os._exit(130)

    threading.Thread(target=watch, daemon=True).start()
    return requested


def set_quiet(flag: bool) -> None:
    global quiet
    quiet = bool(flag)


def log(message: str, always: bool = False) -> None:
    """Progress and provenance lines go to stderr, so stdout carries only results; none under --quiet
    unless `always` (what a user must hear whatever they asked: that a run was interrupted)."""
    if always or not quiet:
        print(message, file=sys.stderr, flush=True)


def progress(iterable=None, **kwargs):
    """A tqdm bar on stderr; none under --quiet."""
    return tqdm(iterable, disable=quiet, file=sys.stderr, dynamic_ncols=True, **kwargs)


def rename_folder_into_place(work: str, folder: str) -> None:
    """Rename a folder made under a temporary name into place. If another process put the folder
    there meanwhile (two runs fetching or generating the same data at once), keep theirs: the
    contents are the same."""
    try:
        os.rename(work, folder)
    except OSError:
        if not os.path.isdir(folder):
            raise


def atomic_write(path: str, write) -> None:
    """Call write(tmp_path), then rename tmp_path to path, so a crash never leaves a half file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, obj) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    atomic_write(path, write)


def global_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict:
    """AUC and logloss over the whole split at once (the published code averaged per batch)."""
    from sklearn.metrics import log_loss, roc_auc_score  # here: the data commands start faster without it
    return {"auc": float(roc_auc_score(labels, predictions)),
            "logloss": float(log_loss(labels, predictions.astype(np.float64), labels=[0, 1]))}


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled row order of one epoch: a function of (seed, epoch) alone, so a resumed run
    replays exactly the order of an uninterrupted one."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_slices(n: int, batch_size: int, drop_last: bool):
    """[start, stop) of each batch. Training drops the short last batch (a new shape would cost a
    graph compile, and BatchNorm and in-batch CIR are noisy on a handful of rows) unless the split
    is smaller than one batch."""
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    return [(start, min(start + batch_size, n)) for start in range(0, stop, batch_size)]
