"""Train IntTower (or one of the paper's baselines: --model) with a graph-compiled train step.

python train.py [--dataset ml-1m|ml-100k|synthetic] [--protocol paper|strict] [--epochs N] ...
writes <out-dir>/IntTower.ckpt (best valid AUC), <out-dir>/IntTower-last.ckpt (resumable) and
<out-dir>/train_metrics.json.
"""
import argparse
import dataclasses
import math
import os
import time

import mindspore as ms
import numpy as np
from mindspore import nn, ops
from mindspore.communication import get_group_size

import distributed
import get_dataset
import model_config
import util
from model import input_names
from networks import build_network

BEST_NAME = "IntTower.ckpt"
LAST_NAME = "IntTower-last.ckpt"
METRICS_NAME = "train_metrics.json"
# flags that may change when resuming; everything else comes from the checkpoint
RESUMABLE_FIELDS = ("epochs", "patience")


class TrainStep(nn.Cell):
    """Forward, loss, gradients and the Adam update as one compiled graph (the fastest form
    measured on CPU: MINDSPORE_NOTES.md). Data parallel (under msrun), the gradients are averaged
    over the workers before the update and the loss returned is the workers' mean."""

    def __init__(self, net, optimizer):
        # no name prefix: checkpoints keep the network's own parameter names
        super().__init__(auto_prefix=False)
        self.net = net
        self.optimizer = optimizer
        self.loss_and_grads = ms.value_and_grad(net.loss, None, optimizer.parameters)
        self.workers = get_group_size()
        if self.workers > 1:
            self.average_grads = nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=self.workers)
            self.sum_over_workers = ops.AllReduce()

    def construct(self, labels, *features):
        loss, grads = self.loss_and_grads(labels, *features)
        if self.workers > 1:
            grads = self.average_grads(grads)
            loss = self.sum_over_workers(loss) / self.workers
        self.optimizer(grads)
        return loss


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_config.add_config_args(parser)
    get_dataset.add_data_args(parser)
    g = parser.add_argument_group("run")
    g.add_argument("--out-dir", default="output", help="where checkpoints and metrics go (default output/)")
    g.add_argument("--max-steps", type=model_config.positive(int),
                   help="stop after this many train steps in this run (the epoch in progress ends there: "
                        "it is validated and checkpointed)")
    g.add_argument("--resume", action="store_true", help=f"continue from <out-dir>/{LAST_NAME}")
    g.add_argument("--deterministic", action="store_true",
                   help="identical weights for identical runs: one CPU thread and dropout reseeded per epoch "
                        "(slower: see README)")
    g.add_argument("--device-target", choices=["CPU", "GPU", "Ascend"], default="CPU", help="default CPU")
    g.add_argument("--pynative", action="store_true", help="run eagerly (PyNative) for debugging; slow")
    return parser.parse_args(argv)


def setup_mindspore(device_target: str, pynative: bool, deterministic: bool) -> None:
    if deterministic:
        # more than one CPU thread makes dropout masks differ run to run; must precede any op
        ms.device_context.cpu.op_tuning.threads_num(1)
    ms.set_device(device_target)
    ms.set_context(mode=ms.PYNATIVE_MODE if pynative else ms.GRAPH_MODE)


def build(schema: dict, config, seed: int):
    """A fresh network, its Adam optimizer and the compiled train step; `seed` fixes the
    initialisation and the dropout streams."""
    util.set_seed(seed)
    net = build_network(schema, config)
    optimizer = nn.Adam(net.trainable_params(), learning_rate=config.lr)
    step = TrainStep(net, optimizer)
    return net, optimizer, step


def resolve_config(args, last_path: str):
    """The run's config: from the flags, or on --resume from the last checkpoint (plus the
    flags that may change between sessions)."""
    if not args.resume:
        return model_config.config_from_args(args), None
    if not os.path.isfile(last_path):
        raise util.UsageError(f"nothing to resume: {last_path} does not exist; train without --resume, or point "
                              "--out-dir at the interrupted run")
    params, meta = util.load_checkpoint(last_path)
    if "progress" not in meta:
        raise util.UsageError(f"{last_path} holds no optimizer state; --resume needs the -last checkpoint")
    stored = model_config.Config(**meta["config"])
    config = model_config.config_from_args(args, stored)
    changed = [f.name for f in dataclasses.fields(config)
               if f.name not in RESUMABLE_FIELDS and getattr(config, f.name) != getattr(stored, f.name)]
    if changed:
        raise util.UsageError(f"--resume continues {last_path} with its own config; drop the flags that change "
                              f"{', '.join(changed)} (only --epochs and --patience may change)")
    return config, (params, meta)


def evaluate(net, split: dict, names, quiet: bool) -> tuple:
    start = time.perf_counter()
    predictions = util.predict(net, split, names, quiet)
    seconds = time.perf_counter() - start
    return util.global_metrics(split["label"], predictions), seconds


def train_epoch(step, shuffled: dict, names, slices, progress: dict, steps_left: float, stop_requested,
                last_path: str, desc: str, quiet: bool) -> list:
    """Run the epoch's remaining steps (from progress["step"]), advancing progress["step"]; stop
    early when stop_requested() (Ctrl-C) or when steps_left runs out. Returns the step losses."""
    losses, start_time = [], time.perf_counter()
    bar = util.progress(range(progress["step"], len(slices)), quiet, desc=desc)
    for i in bar:
        lo, hi = slices[i]
        loss = float(step(*util.to_tensors(shuffled, ("label",) + names, lo, hi)).asnumpy())
        if not math.isfinite(loss):
            kept = f"The last good checkpoint {last_path} is kept. " if os.path.exists(last_path) else ""
            raise util.UsageError(f"training diverged: loss is {loss} at {desc} step {i + 1}. {kept}"
                                  "Lower --lr (or check the data) and run again.")
        losses.append(loss)
        progress["step"] = i + 1
        if i % 20 == 0:
            rows = len(losses) * (hi - lo)  # training batches all have one size
            bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rows / (time.perf_counter() - start_time):.0f}")
        if len(losses) >= steps_left or stop_requested():
            break
    bar.close()
    return losses


def interrupted_exit_code(workers) -> int:
    # under msrun a worker's exit code is not passed on, and a non-zero one makes msrun wait for the
    # scheduler's timeout and report an exception: interrupted workers end normally
    return 0 if workers.distributed else 130


def main(argv=None):
    args = parse_args(argv)
    # flags checked before the workers start (msrun also runs this script as its scheduler)
    if distributed.under_msrun() and (args.pynative or args.deterministic):
        raise util.UsageError("--pynative and --deterministic are for one process: drop them under msrun "
                              "(PyNative gave wrong data-parallel gradients here; --deterministic needs one thread)")
    if args.batch_size and args.batch_size % distributed.worker_count():
        raise util.UsageError(f"--batch-size {args.batch_size} is the global batch: it must be a multiple of the "
                              f"{distributed.worker_count()} workers")
    ctrl_c = util.ctrl_c_event()  # before any MindSpore thread starts, so that none of them takes SIGINT
    setup_mindspore(args.device_target, args.pynative, args.deterministic)
    workers = distributed.Workers()
    quiet = args.quiet or not workers.main
    log = util.log if workers.main else (lambda message: None)  # the main worker speaks for all

    def stop_requested() -> bool:  # all workers stop after the same step
        return workers.any(ctrl_c.is_set())

    last_path = os.path.join(args.out_dir, LAST_NAME)
    best_path = os.path.join(args.out_dir, BEST_NAME)
    config, resumed = resolve_config(args, last_path)
    n_workers = f" on {workers.size} workers" if workers.distributed else ""
    if config.batch_size % workers.size:  # the default or a resumed run's batch size
        raise util.UsageError(f"the global batch of {config.batch_size} rows does not split among the "
                              f"{workers.size} workers: pass --batch-size, a multiple of {workers.size}")
    # a user with network and no data gets it by running train.py (SPEC 3); the main worker
    # fetches and caches it before the others read it
    if not workers.main:
        workers.barrier()
    data = get_dataset.load_dataset(config, args.data_root, download=True, use_cache=not args.no_cache,
                                    quiet=quiet, source=args.source)
    if workers.main:
        workers.barrier()
    names = input_names(config)
    n_train = len(data.train["label"])
    batch_size = min(config.batch_size, n_train)
    if batch_size % workers.size:
        raise util.UsageError(f"{n_train} training rows are fewer than --batch-size {config.batch_size} and do not "
                              f"split among the {workers.size} workers")
    # this worker's part of each global batch (Workers.rows lays them out batch after batch)
    slices = util.batch_slices(n_train // batch_size * batch_size // workers.size, batch_size // workers.size,
                               drop_last=True)
    log(f"training {config.model} on {config.dataset} ({config.protocol} protocol){n_workers}: {n_train} "
             f"train rows, {len(slices)} steps of {batch_size} per epoch, "
             f"{'PyNative' if args.pynative else 'graph'} mode")

    net, optimizer, step = build(data.schema, config, config.seed)
    progress = {"epoch": 0, "step": 0, "epochs": [], "best_epoch": None, "best_valid_auc": None}
    if resumed:
        params, stored = resumed
        util.load_parameters(net, params, last_path)
        util.load_parameters(optimizer, params, last_path)
        progress = stored["progress"]
        log(f"resuming {last_path} at epoch {progress['epoch'] + 1}, step {progress['step']}")
    meta = {"config": dataclasses.asdict(config), "schema": data.schema}

    def save_last():
        if workers.main:
            util.save_checkpoint(last_path, (net, optimizer), dict(meta, progress=progress))

    steps_left = args.max_steps if args.max_steps is not None else math.inf
    epochs_without_gain = len(progress["epochs"]) - (progress["best_epoch"] or 0)
    interrupted = False
    while (progress["epoch"] < config.epochs and steps_left > 0 and epochs_without_gain < config.patience
           and not interrupted):
        epoch = progress["epoch"]
        if args.deterministic and epoch > 0:
            # every epoch starts exactly as a resumed run does: rebuilt with dropout streams seeded
            # by the epoch, weights and optimizer state from the last checkpoint
            net, optimizer, step = build(data.schema, config, (config.seed + epoch) % 2**31)
            params, _ = util.load_checkpoint(last_path)
            util.load_parameters(net, params, last_path)
            util.load_parameters(optimizer, params, last_path)
        step.set_train(config.train_mode)
        rows = workers.rows(util.epoch_order(n_train, config.seed, epoch), batch_size)
        shuffled = {name: data.train[name][rows] for name in names + ("label",)}
        start_time = time.perf_counter()
        losses = train_epoch(step, shuffled, names, slices, progress, steps_left, stop_requested, last_path,
                             f"epoch {epoch + 1}/{config.epochs}", quiet)
        seconds = time.perf_counter() - start_time
        steps_left -= len(losses)
        workers.average_statistics(net)
        interrupted = stop_requested()
        if interrupted and progress["step"] < len(slices):
            save_last()
            log(f"interrupted: saved {last_path} at epoch {epoch + 1} step {progress['step']}; continue with --resume")
            return interrupted_exit_code(workers)
        # the main worker validates on the whole split; every worker then keeps the same books from
        # its AUC (as float32, so that they take the same decisions)
        valid_metrics, valid_seconds = (evaluate(net, data.valid, names, quiet) if workers.main
                                        else ({"auc": 0.0, "logloss": 0.0}, 0.0))
        valid_auc = float(workers.from_main([valid_metrics["auc"]])[0])
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                  "valid_auc": valid_metrics["auc"], "valid_logloss": valid_metrics["logloss"],
                  "seconds": seconds, "samples_per_s": len(losses) * batch_size / seconds,
                  "steps": len(losses), "valid_seconds": valid_seconds}
        progress["epochs"].append(record)
        progress["epoch"], progress["step"] = epoch + 1, 0
        if workers.main:
            util.log(f"epoch {epoch + 1}: train_loss={record['train_loss']:.4f} "
                     f"valid_auc={record['valid_auc']:.4f} valid_logloss={record['valid_logloss']:.4f} "
                     f"({seconds:.1f} s, {record['samples_per_s']:.0f} samples/s{n_workers}; "
                     f"valid {len(data.valid['label']) / valid_seconds:.0f} samples/s)")
        if progress["best_valid_auc"] is None or valid_auc > progress["best_valid_auc"]:
            progress["best_valid_auc"], progress["best_epoch"] = valid_auc, epoch + 1
            epochs_without_gain = 0
            if workers.main:
                util.save_checkpoint(best_path, (net,), dict(meta, epoch=epoch + 1, valid_auc=record["valid_auc"]))
        else:
            epochs_without_gain += 1
        save_last()
        metrics = {"config": meta["config"], "best_epoch": progress["best_epoch"], "epochs": progress["epochs"]}
        if workers.distributed:
            metrics["workers"] = {"count": workers.size, "parameter_checksums": workers.checksums(net)}
        if workers.main:
            util.write_json(os.path.join(args.out_dir, METRICS_NAME), metrics)
    if interrupted:
        log(f"interrupted after epoch {progress['epoch']}: {last_path} is saved; continue with --resume")
        return interrupted_exit_code(workers)
    if epochs_without_gain >= config.patience:
        log(f"early stop: no better valid AUC for {config.patience} epochs")
    log(f"best epoch {progress['best_epoch']} (valid_auc={progress['best_valid_auc']:.4f}) -> {best_path}")
    return 0


if __name__ == "__main__":
    util.run_cli(main)
