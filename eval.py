"""Evaluate a checkpoint on its test split: global AUC and logloss over every test row.

python eval.py [--ckpt output/IntTower.ckpt] [--predictions preds.csv]
The checkpoint carries its config and feature schema, so the same data, protocol, split and
seed are rebuilt without repeating flags.
"""
import argparse
import os
import time

import mindspore as ms
import numpy as np

import get_dataset
import util
from model import input_names, model_from_checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default="output/IntTower.ckpt", help="checkpoint (default output/IntTower.ckpt)")
    parser.add_argument("--out-dir", default="output", help="where eval_metrics.json goes (default output/)")
    parser.add_argument("--auc-log", default="auc.log", help="file a result line is appended to (default auc.log)")
    parser.add_argument("--predictions", metavar="FILE", help="write a CSV label,prediction for every test row")
    parser.add_argument("--data-root", default="data", help="where the datasets are (default data/)")
    parser.add_argument("--device-target", choices=["CPU", "GPU", "Ascend"], default="CPU", help="default CPU")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def load_matching_test_split(meta: dict, config, data_root: str, quiet: bool) -> dict:
    """The checkpoint's own test split; refuses data that differs from what it was trained on."""
    data = get_dataset.load_dataset(config, data_root, quiet=quiet)
    trained, found = meta["schema"], data.schema
    for key in ("vocab", "data_hash", "rows"):
        if trained.get(key) != found.get(key):
            raise util.UsageError(f"the {config.dataset} data under {data_root} is not the data the checkpoint was "
                                  f"trained on ({key}: checkpoint {trained.get(key)}, data {found.get(key)}); "
                                  "point --data-root at the original files or retrain")
    return data.test


def write_predictions(path: str, labels: np.ndarray, predictions: np.ndarray) -> None:
    table = np.column_stack([labels, predictions])
    util.atomic_write(path, lambda tmp: np.savetxt(tmp, table, fmt=["%d", "%.8f"], delimiter=",",
                                                   header="label,prediction", comments=""))


def main(argv=None):
    args = parse_args(argv)
    ms.set_device(args.device_target)
    ms.set_context(mode=ms.GRAPH_MODE)
    net, config, meta = model_from_checkpoint(args.ckpt)
    test = load_matching_test_split(meta, config, args.data_root, args.quiet)
    start = time.perf_counter()
    predictions = util.predict(net, test, input_names(config), args.quiet)
    seconds = time.perf_counter() - start
    metrics = util.global_metrics(test["label"], predictions)
    rows = len(predictions)
    print(f"test_auc={metrics['auc']:.4f} test_logloss={metrics['logloss']:.4f}")
    util.write_json(os.path.join(args.out_dir, "eval_metrics.json"),
                    {"test_auc": metrics["auc"], "test_logloss": metrics["logloss"], "rows": rows,
                     "seconds": seconds, "samples_per_s": rows / seconds, "checkpoint": os.path.abspath(args.ckpt),
                     "config": meta["config"]})
    with open(args.auc_log, "a") as log_file:
        log_file.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {args.ckpt} {config.model} {config.dataset} "
                       f"{config.protocol} test_auc={metrics['auc']:.6f} test_logloss={metrics['logloss']:.6f}\n")
    if args.predictions:
        write_predictions(args.predictions, test["label"], predictions)
    return 0


if __name__ == "__main__":
    util.run_cli(main)
