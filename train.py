"""Train IntTower (or one of the paper's baselines: --model) with a graph-compiled train step.

    python train.py [--dataset ml-1m|ml-100k|synthetic] [--protocol paper|strict] [--model M] ...
    msrun --worker_num=2 --local_worker_num=2 --master_port=8118 --log_dir=msrun_logs --join=True train.py ...

writes <out-dir>/<Model>.ckpt (best valid AUC: IntTower.ckpt, DCN.ckpt, ...), <out-dir>/<Model>-last.ckpt
(resumable with --resume) and <out-dir>/train_metrics.json. Under msrun every worker trains on its
slice of each global batch and the main worker writes every file and message.
"""
import argparse
import dataclasses
import glob
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
import ms_util
import util
from features import input_names
from networks import METRICS_NAME, build_network, checkpoint_names

# flags that may change when resuming; everything else comes from the checkpoint
RESUMABLE_FIELDS = ("epochs", "patience")


class TrainStep(nn.Cell):
    """Forward, loss, gradients and the Adam update as one compiled graph (the fastest form
    measured on CPU: README, Speed). Data parallel (under msrun), the gradients are averaged over
    the workers before the update and the loss returned is the workers' mean."""

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
    g.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its -last checkpoint")
    g.add_argument("--deterministic", action="store_true",
                   help="identical weights for identical runs: one CPU thread and dropout reseeded per epoch "
                        "(slower: see README)")
    g.add_argument("--threads", type=model_config.positive(int),
                   help="CPU threads for MindSpore's ops (default: every core; --deterministic uses one)")
    g.add_argument("--device-target", choices=["CPU", "GPU", "Ascend"], default="CPU", help="default CPU")
    g.add_argument("--pynative", action="store_true", help="run eagerly (PyNative) for debugging; slow")
    return parser.parse_args(argv)


def resolve_config(args):
    """The run's config, and on --resume the last checkpoint's (path, parameters, meta): the config
    then comes from that checkpoint, and only the flags RESUMABLE_FIELDS names may change it."""
    if not args.resume:
        return model_config.config_from_args(args), None
    model = [args.model] if args.model else list(model_config.MODEL_NAMES)
    found = [path for path in glob.glob(os.path.join(args.out_dir, "*-last.ckpt"))
             if os.path.basename(path) in {checkpoint_names(m)[1] for m in model}]
    if len(found) != 1:
        raise util.UsageError(f"nothing to resume: {args.out_dir} holds {'no' if not found else 'more than one'} "
                              "-last checkpoint; train without --resume, point --out-dir at the interrupted run, "
                              "or name its --model")
    params, meta = ms_util.load_checkpoint(found[0])
    if "progress" not in meta:
        raise util.UsageError(f"{found[0]} holds no optimizer state; --resume needs the -last checkpoint")
    stored = model_config.Config(**meta["config"])
    config = model_config.config_from_args(args, stored)
    changed = [f.name for f in dataclasses.fields(config)
               if f.name not in RESUMABLE_FIELDS and getattr(config, f.name) != getattr(stored, f.name)]
    if changed:
        raise util.UsageError(f"--resume continues {found[0]} with its own config; drop the flags that change "
                              f"{', '.join(changed)} (only --epochs and --patience may change)")
    return config, (found[0], params, meta)


def build(schema: dict, config, seed: int):
    """A fresh network, its Adam optimizer and the compiled train step; `seed` fixes the
    initialisation and the dropout streams."""
    ms_util.set_seed(seed)
    net = build_network(schema, config)
    optimizer = nn.Adam(net.trainable_params(), learning_rate=config.lr)
    return net, optimizer, TrainStep(net, optimizer)


def main(argv=None):
    args = parse_args(argv)

    # ---- workers. msrun also runs this script as its scheduler, which stops at Workers(): what
    # can be refused is refused before it, so that msrun reports it at once
    if distributed.under_msrun() and (args.pynative or args.deterministic):
        raise util.UsageError("--pynative and --deterministic are for one process: drop them under msrun "
                              "(PyNative gave wrong data-parallel gradients here; --deterministic needs one thread)")
    if args.deterministic and args.threads not in (None, 1):
        raise util.UsageError("--deterministic runs on one CPU thread: drop --threads")
    config, resumed = resolve_config(args)
    if config.batch_size % distributed.worker_count():
        raise util.UsageError(f"--batch-size {config.batch_size} is the global batch: it must be a multiple of the "
                              f"{distributed.worker_count()} workers")
    ctrl_c = util.ctrl_c_event()  # before any MindSpore thread starts, so that none of them takes SIGINT
    ms_util.setup(args.device_target, args.pynative, threads=1 if args.deterministic else args.threads)
    workers = distributed.Workers()
    util.set_quiet(args.quiet or not workers.main)  # the main worker speaks for all

    # ---- data: the main worker fetches (train.py downloads missing data) and caches it first
    if not workers.main:
        workers.barrier()
    data = get_dataset.load_dataset(config, args.data_root, download=True, use_cache=not args.no_cache,
                                    source=args.source)
    if workers.main:
        workers.barrier()
    names = input_names(config)
    n_train = len(data.train["label"])
    batch_size = min(config.batch_size, n_train // workers.size * workers.size)  # a smaller split: one batch
    # this worker's part of each global batch (distributed.worker_rows lays them out batch after batch)
    slices = util.batch_slices(n_train // batch_size * batch_size // workers.size, batch_size // workers.size,
                               drop_last=True)
    n_workers = f" on {workers.size} workers" if workers.distributed else ""
    util.log(f"training {config.model} on {config.dataset} ({config.protocol} protocol){n_workers}: {n_train} "
             f"train rows, {len(slices)} steps of {batch_size} per epoch, "
             f"{'PyNative' if args.pynative else 'graph'} mode")

    # ---- model, optimizer and the early-stopping record, fresh or from the last checkpoint
    net, optimizer, step = build(data.schema, config, config.seed)
    record = {"epoch": 0, "step": 0, "epochs": [], "best_epoch": None, "best_valid_auc": None}
    if resumed:
        resumed_path, params, stored = resumed
        ms_util.load_parameters(net, params, resumed_path)
        ms_util.load_parameters(optimizer, params, resumed_path)
        record = stored["progress"]
        util.log(f"resuming {resumed_path} at epoch {record['epoch'] + 1}, step {record['step']}")
    best_path, last_path = (os.path.join(args.out_dir, name) for name in checkpoint_names(config.model))
    meta = {"config": dataclasses.asdict(config), "schema": data.schema}

    def save(best: bool = False, metrics: bool = True) -> None:
        """The one place that writes files: the main worker's best and last checkpoints and metrics.
        Every worker calls it, since the workers' parameter checksums are gathered from all."""
        report = {"config": meta["config"], "best_epoch": record["best_epoch"], "epochs": record["epochs"]}
        if metrics and workers.distributed:
            report["workers"] = {"count": workers.size, "parameter_checksums": workers.checksums(net)}
        if not workers.main:
            return
        if best:
            ms_util.save_checkpoint(best_path, (net,), dict(meta, epoch=record["best_epoch"],
                                                            valid_auc=record["epochs"][-1]["valid_auc"]))
        ms_util.save_checkpoint(last_path, (net, optimizer), dict(meta, progress=record))
        if metrics:
            util.write_json(os.path.join(args.out_dir, METRICS_NAME), report)

    def stop_requested() -> bool:  # Ctrl-C to any worker: all stop after the same step
        return workers.any(ctrl_c.is_set())

    # ---- the epoch loop: train, validate, keep the best, stop early
    steps_left = args.max_steps or math.inf
    while (record["epoch"] < config.epochs and steps_left > 0
           and len(record["epochs"]) - (record["best_epoch"] or 0) < config.patience):
        epoch = record["epoch"]
        if args.deterministic and epoch > 0:
            # every epoch starts exactly as a resumed run does: rebuilt with dropout streams seeded
            # by the epoch, weights and optimizer state from the last checkpoint
            net, optimizer, step = build(data.schema, config, (config.seed + epoch) % 2**31)
            params, _ = ms_util.load_checkpoint(last_path)
            ms_util.load_parameters(net, params, last_path)
            ms_util.load_parameters(optimizer, params, last_path)
        step.set_train(config.train_mode)
        rows = workers.rows(util.epoch_order(n_train, config.seed, epoch), batch_size)
        shuffled = {name: data.train[name][rows] for name in names + ("label",)}
        losses, start = [], time.perf_counter()
        bar = util.progress(range(record["step"], len(slices)), desc=f"epoch {epoch + 1}/{config.epochs}")
        for i in bar:
            lo, hi = slices[i]
            loss = float(step(*ms_util.to_tensors(shuffled, ("label",) + names, lo, hi)).asnumpy())
            if not math.isfinite(loss):
                kept = f"The last good checkpoint {last_path} is kept. " if os.path.exists(last_path) else ""
                raise util.UsageError(f"training diverged: loss is {loss} at epoch {epoch + 1} step {i + 1}. {kept}"
                                      "Lower --lr (or check the data) and run again.")
            losses.append(loss)
            record["step"] = i + 1
            if i % 20 == 0:
                samples_per_s = len(losses) * batch_size / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_s:.0f}")
            if len(losses) >= steps_left or stop_requested():
                break
        bar.close()
        seconds = time.perf_counter() - start
        steps_left -= len(losses)
        workers.average_statistics(net)
        if stop_requested() and record["step"] < len(slices):
            save(metrics=False)
            util.log(f"interrupted: saved {last_path} at epoch {epoch + 1} step {record['step']}; "
                     "continue with --resume", always=True)
            return 0 if workers.distributed else 130  # msrun passes no worker's exit code on

        # the main worker validates on the whole split; every worker keeps the same record from its
        # AUC (as float32, so that they all take the same decisions)
        valid = (ms_util.evaluate(net, data.valid, names) if workers.main
                 else {"auc": 0.0, "logloss": 0.0, "seconds": 0.0})
        valid_auc = float(workers.from_main([valid["auc"]])[0])
        record["epochs"].append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "valid_auc": valid["auc"],
                                 "valid_logloss": valid["logloss"], "seconds": seconds,
                                 "samples_per_s": len(losses) * batch_size / seconds, "steps": len(losses),
                                 "valid_seconds": valid["seconds"]})
        record["epoch"], record["step"] = epoch + 1, 0
        improved = record["best_valid_auc"] is None or valid_auc > record["best_valid_auc"]
        if improved:
            record["best_valid_auc"], record["best_epoch"] = valid_auc, epoch + 1
        util.log(f"epoch {epoch + 1}: train_loss={record['epochs'][-1]['train_loss']:.4f} "
                 f"valid_auc={valid['auc']:.4f} valid_logloss={valid['logloss']:.4f} "
                 f"({seconds:.1f} s, {record['epochs'][-1]['samples_per_s']:.0f} samples/s{n_workers}; "
                 f"valid {len(data.valid['label']) / max(valid['seconds'], 1e-9):.0f} samples/s)")
        save(best=improved)
        if stop_requested():
            util.log(f"interrupted after epoch {record['epoch']}: {last_path} is saved; continue with --resume",
                     always=True)
            return 0 if workers.distributed else 130

    if len(record["epochs"]) - (record["best_epoch"] or 0) >= config.patience:
        util.log(f"early stop: no better valid AUC for {config.patience} epochs")
    util.log(f"best epoch {record['best_epoch']} (valid_auc={record['best_valid_auc']:.4f}) -> {best_path}")
    return 0


if __name__ == "__main__":
    util.run_cli(main)
