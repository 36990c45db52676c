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
    parser.add_argument("--published-metrics", action="store_true",
                        help="also report the test AUC as the published code computes it (network left in "
                             "train mode, AUC averaged over batches of the batch size), for comparison")
    parser.add_argument("--device-target", choices=["CPU", "GPU", "Ascend"], default="CPU", help="default CPU")
    get_dataset.add_data_args(parser)
    return parser.parse_args(argv)


def load_matching_dataset(meta: dict, config, args):
    """The checkpoint's own dataset and splits; refuses data that differs from what it was trained on."""
    data_root = args.data_root
    data = get_dataset.load_dataset(config, data_root, download=args.download, use_cache=not args.no_cache,
                                    quiet=args.quiet, source=args.source)
    trained, found = meta["schema"], data.schema
    for key in ("vocab", "data_hash", "rows"):
        if trained.get(key) != found.get(key):
            raise util.UsageError(f"the {config.dataset} data under {data_root} is not the data the checkpoint was "
                                  f"trained on ({key}: checkpoint {trained.get(key)}, data {found.get(key)}); "
                                  "point --data-root at the original files or retrain")
    return data


def published_metrics(net, test: dict, names, batch_size: int, predictions: np.ndarray) -> dict:
    """The published evaluation, kept for comparison: it never switches the network to inference
    mode (BatchNorm normalises each batch by its own statistics, Dropout stays on) and averages
    per-batch AUCs. Each effect is reported alone (beside `predictions`, the inference-mode ones)
    and combined."""
    labels = test["label"]
    slices = util.batch_slices(len(labels), batch_size, drop_last=False)
    net.set_train(True)
    train_mode = np.concatenate([net(*util.to_tensors(test, names, lo, hi)).asnumpy() for lo, hi in slices])
    net.set_train(False)

    def batch_mean_auc(predictions):
        aucs = [util.global_metrics(labels[lo:hi], predictions[lo:hi])["auc"] for lo, hi in slices
                if 0 < labels[lo:hi].sum() < hi - lo]
        return float(np.mean(aucs))

    return {"batch_mean_auc": batch_mean_auc(predictions),
            "train_mode_auc": util.global_metrics(labels, train_mode)["auc"],
            "train_mode_batch_mean_auc": batch_mean_auc(train_mode)}


def write_predictions(path: str, labels: np.ndarray, predictions: np.ndarray) -> None:
    table = np.column_stack([labels, predictions])
    util.atomic_write(path, lambda tmp: np.savetxt(tmp, table, fmt=["%d", "%.8f"], delimiter=",",
                                                   header="label,prediction", comments=""))


def main(argv=None):
    args = parse_args(argv)
    ms.set_device(args.device_target)
    ms.set_context(mode=ms.GRAPH_MODE)
    net, config, meta = model_from_checkpoint(args.ckpt)
    test = load_matching_dataset(meta, config, args).test
    start = time.perf_counter()
    predictions = util.predict(net, test, input_names(config), args.quiet)
    seconds = time.perf_counter() - start
    metrics = util.global_metrics(test["label"], predictions)
    rows = len(predictions)
    print(f"test_auc={metrics['auc']:.4f} test_logloss={metrics['logloss']:.4f}")
    report = {"test_auc": metrics["auc"], "test_logloss": metrics["logloss"], "rows": rows, "seconds": seconds,
              "samples_per_s": rows / seconds, "checkpoint": os.path.abspath(args.ckpt), "config": meta["config"]}
    if args.published_metrics:
        report["published"] = published_metrics(net, test, input_names(config), config.batch_size, predictions)
        print(" ".join(f"published_{name}={value:.4f}" for name, value in report["published"].items()))
    util.write_json(os.path.join(args.out_dir, "eval_metrics.json"), report)
    with open(args.auc_log, "a") as log_file:
        log_file.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {args.ckpt} {config.model} {config.dataset} "
                       f"{config.protocol} test_auc={metrics['auc']:.6f} test_logloss={metrics['logloss']:.6f}\n")
    if args.predictions:
        write_predictions(args.predictions, test["label"], predictions)
    return 0


if __name__ == "__main__":
    util.run_cli(main)
