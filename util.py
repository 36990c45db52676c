"""Shared helpers: the bad-input error and CLI wrapper, metrics, seeding, atomic checkpoint and
JSON I/O, batching and logging.

mindspore and scikit-learn are imported inside the functions that use them: get_dataset.py needs
only the light helpers here and starts ~1 s faster without them.
"""
import json
import os
import random
import signal
import sys
import tempfile
import threading

import numpy as np
from tqdm import tqdm

PROJECT_VERSION = "0.1.0"


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
        log("Ctrl-C: stopping after this step (press again to quit at once)")
        signal.sigwait({signal.SIGINT})
        os._exit(130)

    threading.Thread(target=watch, daemon=True).start()
    return requested


def log(message: str) -> None:
    """Progress and provenance lines go to stderr, so stdout carries only results."""
    print(message, file=sys.stderr, flush=True)


def progress(iterable, quiet: bool, **kwargs):
    return tqdm(iterable, disable=quiet, file=sys.stderr, dynamic_ncols=True, **kwargs)


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
    from sklearn.metrics import log_loss, roc_auc_score
    return {"auc": float(roc_auc_score(labels, predictions)),
            "logloss": float(log_loss(labels, predictions.astype(np.float64), labels=[0, 1]))}


def set_seed(seed: int) -> None:
    import mindspore as ms
    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)


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


def save_checkpoint(path: str, cells, meta: dict) -> None:
    """Every parameter of `cells` (a network, and its optimizer for a resumable checkpoint) plus
    `meta` (config, schema, progress) as JSON, written to a temporary name and renamed."""
    import mindspore as ms
    params = {}
    for cell in cells:
        for param in cell.get_parameters():
            params.setdefault(param.name, param)
    payload = [{"name": name, "data": param} for name, param in params.items()]
    meta = dict(meta, project_version=PROJECT_VERSION, mindspore_version=ms.__version__)
    atomic_write(path, lambda tmp: ms.save_checkpoint(payload, tmp, append_dict={"meta_json": json.dumps(meta)}))


def load_checkpoint(path: str):
    """-> (parameter dict, meta). A missing or unreadable file is a UsageError."""
    import mindspore as ms
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path} does not exist: train one with `python train.py` "
                         "or pass --ckpt PATH")
    try:
        params = ms.load_checkpoint(path)
        meta = json.loads(params.pop("meta_json"))
    except Exception as err:
        raise UsageError(f"{path} is not a checkpoint written by this project's train.py ({err})") from None
    return params, meta


def load_parameters(cell, params: dict, path: str) -> None:
    """Load `params` into `cell` after checking every name and shape first (MindSpore's loader
    overwrites part of a network before it notices a mismatch)."""
    import mindspore as ms
    expected = {p.name: tuple(p.shape) for p in cell.get_parameters()}
    missing = sorted(set(expected) - set(params))
    wrong = sorted(name for name in expected if name in params and tuple(params[name].shape) != expected[name])
    if missing or wrong:
        detail = (f"missing {missing[:3]}" if missing else "") + (f" wrong shape {wrong[:3]}" if wrong else "")
        raise UsageError(f"checkpoint {path} does not fit this network ({detail.strip()}): it was written by "
                         "another version of the code or for other data; retrain with `python train.py`")
    ms.load_param_into_net(cell, {name: params[name] for name in expected}, strict_load=True)


EVAL_BATCH_SIZE = 8192


def to_tensors(split: dict, names, start: int = 0, stop: int = None):
    import mindspore as ms
    return tuple(ms.Tensor(split[name][start:stop]) for name in names)


def predict(net, split: dict, names, quiet: bool = True) -> np.ndarray:
    """Click probabilities for every row of a split, in inference mode, in large batches. The
    last batch wraps around to the split's first rows to keep its size: one compiled graph
    serves every batch of every split."""
    import mindspore as ms
    net.set_train(False)
    n = len(split["label"])
    batch_size = min(EVAL_BATCH_SIZE, n)
    out = []
    for start in progress(range(0, n, batch_size), quiet, desc="predict", leave=False):
        rows = np.arange(start, start + batch_size) % n
        out.append(net(*(ms.Tensor(split[name][rows]) for name in names)).asnumpy())
    return np.concatenate(out)[:n]
