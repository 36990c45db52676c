"""Helpers that need MindSpore: context setup and seeding, tensors from split arrays, batched
prediction and evaluation (what train.py validates with and eval.py tests with), and checkpoint
I/O that checks a file before it touches a network."""
import json
import os
import random
import time

import mindspore as ms
import numpy as np

import util

PROJECT_VERSION = "0.2.0"
EVAL_BATCH_SIZE = 8192


def setup(device_target: str = "CPU", pynative: bool = False, threads: int = None) -> None:
    """Device and execution mode; `threads` CPU threads for the ops (default: every core). One thread
    gives bit-identical runs: with more, dropout masks differ run to run. threads_num must precede
    any op."""
    if threads:
        ms.device_context.cpu.op_tuning.threads_num(threads)
    ms.set_device(device_target)
    ms.set_context(mode=ms.PYNATIVE_MODE if pynative else ms.GRAPH_MODE)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)


def to_tensors(split: dict, names, start: int = 0, stop: int = None):
    return tuple(ms.Tensor(split[name][start:stop]) for name in names)


def predict(net, split: dict, names) -> np.ndarray:
    """The network's output for every row of a split, in inference mode, in large batches. The
    last batch wraps around to the split's first rows to keep its size: one compiled graph
    serves every batch of every split."""
    net.set_train(False)
    n = len(next(iter(split.values())))
    batch_size = min(EVAL_BATCH_SIZE, n)
    out = []
    for start in util.progress(range(0, n, batch_size), desc="predict", leave=False):
        rows = np.arange(start, start + batch_size) % n
        out.append(net(*(ms.Tensor(split[name][rows]) for name in names)).asnumpy())
    return np.concatenate(out)[:n]


def evaluate(net, split: dict, names) -> dict:
    """Global AUC and logloss over a split, with the predictions and how long they took."""
    start = time.perf_counter()
    predictions = predict(net, split, names)
    seconds = time.perf_counter() - start
    return dict(util.global_metrics(split["label"], predictions), predictions=predictions, seconds=seconds,
                samples_per_s=len(predictions) / seconds)


def save_checkpoint(path: str, cells, meta: dict) -> None:
    """Every parameter of `cells` (a network, and its optimizer for a resumable checkpoint) plus
    `meta` (config, schema, progress) as JSON, written to a temporary name and renamed."""
    params = {}
    for cell in cells:
        for param in cell.get_parameters():
            params.setdefault(param.name, param)
    payload = [{"name": name, "data": param} for name, param in params.items()]
    meta = dict(meta, project_version=PROJECT_VERSION, mindspore_version=ms.__version__)
    util.atomic_write(path, lambda tmp: ms.save_checkpoint(payload, tmp,
                                                           append_dict={"meta_json": json.dumps(meta)}))


def load_checkpoint(path: str):
    """-> (parameter dict, meta). A missing or unreadable file is a UsageError."""
    if not os.path.isfile(path):
        raise util.UsageError(f"checkpoint {path} does not exist: train one with `python train.py` "
                              "or pass --ckpt PATH")
    try:
        params = ms.load_checkpoint(path)
        meta = json.loads(params.pop("meta_json"))
    except Exception as err:
        raise util.UsageError(f"{path} is not a checkpoint written by this project's train.py ({err})") from None
    return params, meta


def load_parameters(cell, params: dict, path: str) -> None:
    """Load `params` into `cell` after checking every name and shape first (MindSpore's loader
    overwrites part of a network before it notices a mismatch)."""
    expected = {p.name: tuple(p.shape) for p in cell.get_parameters()}
    missing = sorted(set(expected) - set(params))
    wrong = sorted(name for name in expected if name in params and tuple(params[name].shape) != expected[name])
    if missing or wrong:
        detail = (f"missing {missing[:3]}" if missing else "") + (f" wrong shape {wrong[:3]}" if wrong else "")
        raise util.UsageError(f"checkpoint {path} does not fit this network ({detail.strip()}): it was written by "
                              "another version of the code or for other data; retrain with `python train.py`")
    ms.load_param_into_net(cell, {name: params[name] for name in expected}, strict_load=True)
