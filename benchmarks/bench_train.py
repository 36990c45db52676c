"""Training and whole-split inference speed on the full synthetic ML-1M-shaped set.

python benchmarks/bench_train.py [--data-root data] [--epochs 2] [--steps 40]

(a) train.py end to end (subprocess): per-epoch samples/s of its training loop, valid inference
    samples/s, and the peak RSS of the whole run;
(b) the bare compiled train step on tensors already in memory (the ceiling for this model here);
(c) the same model trained step by step in PyNative mode (how the published code runs);
(d) achieved GFLOP/s of (a) and (b) from the model's FLOP count;
(e) whole-split inference (valid + test) in inference mode.
Prints a markdown table. Run it on an otherwise idle machine.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import nn  # noqa: E402

import get_dataset  # noqa: E402
import ms_util  # noqa: E402
from features import input_names  # noqa: E402
from model import IntTower  # noqa: E402
from model_config import Config  # noqa: E402
from bench_prerank import cpu_name  # noqa: E402
from train import build  # noqa: E402



def gemm_gflops(size=2048, repeats=5):
    """This machine's fp32 GEMM rate through numpy (OpenBLAS), the best of a few runs: the ceiling
    the train step's matmuls are held against."""
    a = np.ones((size, size), np.float32)
    best = min(timed(lambda: a @ a) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def train_flops_per_sample(net: IntTower, config: Config) -> float:
    """IntTower's forward FLOPs (2 x multiply-adds of every Dense and of MaxSim), x3 for
    forward+backward, plus the in-batch CIR similarity matrix (forward matmul and its two backward
    matmuls)."""
    dense = sum(2 * cell.in_channels * cell.out_channels for _, cell in net.cells_and_names()
                if isinstance(cell, nn.Dense))
    user_heads = len(net.user_fe) * config.head_num
    maxsim = 2 * user_heads * config.head_num * (config.feblock_size // config.head_num)
    cir = 3 * 2 * config.batch_size * config.mlp_layers[-1] if net.cir_weight > 0 else 0
    return 3 * (dense + maxsim) + cir


def run_train_py(data_root: str, epochs: int) -> tuple:
    """train.py as a user runs it; returns (train_metrics, peak RSS in MB of that process)."""
    with tempfile.TemporaryDirectory() as out_dir:
        subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--dataset", "synthetic",
                        "--data-root", data_root, "--epochs", str(epochs), "--patience", str(epochs),
                        "--out-dir", out_dir, "--quiet"], check=True)
        with open(os.path.join(out_dir, "train_metrics.json")) as f:
            metrics = json.load(f)
    return metrics, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def time_steps(step, batches, steps: int) -> float:
    """samples/s of `steps` train steps cycling over pre-built tensor batches (after a warm-up)."""
    float(step(*batches[0]).asnumpy())
    start = time.perf_counter()
    for i in range(steps):
        loss = step(*batches[i % len(batches)])
    float(loss.asnumpy())
    return steps * batches[0][0].shape[0] / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.path.join(ROOT, "data"))
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the train.py run (a)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps for (b) and (c)")
    args = parser.parse_args()

    config = Config(dataset="synthetic")
    data = get_dataset.load_dataset(config, args.data_root)
    names = input_names(config)
    metrics, peak_rss_mb = run_train_py(args.data_root, args.epochs)

    ms.set_context(mode=ms.GRAPH_MODE)
    net, _, step = build(data.schema, config, config.seed)
    step.set_train(True)
    batch = config.batch_size
    batches = [(ms.Tensor(data.train["label"][i:i + batch]), *ms_util.to_tensors(data.train, names, i, i + batch))
               for i in range(0, 8 * batch, batch)]
    graph_step = time_steps(step, batches, args.steps)

    ms_util.predict(net, data.valid, names)  # compile the inference graph before timing it
    start = time.perf_counter()
    rows = sum(len(ms_util.predict(net, split, names)) for split in (data.valid, data.test))
    inference = rows / (time.perf_counter() - start)

    ms.set_context(mode=ms.PYNATIVE_MODE)
    _, _, eager_step = build(data.schema, config, config.seed)
    eager_step.set_train(True)
    pynative_step = time_steps(eager_step, batches, max(args.steps // 4, 5))

    flops = train_flops_per_sample(net, config)
    peak = gemm_gflops()
    last = metrics["epochs"][-1]
    rows_out = [
        ("(a) train.py loop, last epoch", f"{last['samples_per_s']:,.0f}",
         f"{last['seconds']:.1f} s/epoch, {flops * last['samples_per_s'] / 1e9:.1f} GFLOP/s"),
        ("(a) train.py valid inference", f"{len(data.valid['label']) / last['valid_seconds']:,.0f}",
         f"{last['valid_seconds']:.2f} s for {len(data.valid['label'])} rows"),
        ("(a) train.py peak RSS", "", f"{peak_rss_mb:,.0f} MB"),
        ("(b) bare compiled train step", f"{graph_step:,.0f}",
         f"{flops * graph_step / 1e9:.1f} GFLOP/s, numpy's fp32 GEMM here {peak:.0f} GFLOP/s; "
         f"(a) reaches {100 * last['samples_per_s'] / graph_step:.0f}% of it"),
        ("(c) PyNative step by step", f"{pynative_step:,.0f}", f"{graph_step / pynative_step:.1f}x slower than (b)"),
        ("(e) whole-split inference (valid+test)", f"{inference:,.0f}", f"{rows} rows"),
    ]
    print(f"{cpu_name()}; mindspore {ms.__version__}; load average {os.getloadavg()[0]:.2f}")
    print(f"training FLOPs per sample: {flops / 1e6:.2f} M (batch {batch}); epochs of (a): "
          + ", ".join(f"{e['samples_per_s']:,.0f}" for e in metrics["epochs"]) + " samples/s")
    print("| measurement | samples/s | notes |\n| --- | --- | --- |")
    for row in rows_out:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
