"""Data-parallel scaling: train.py in one process against `msrun` with 2 workers, in one run.

python benchmarks/bench_distributed.py [--epochs 2] [--data-root data] [--synthetic-scale 1.0]

Trains the default IntTower on the synthetic ML-1M shape for --epochs epochs (same global batch,
same seed) with 1 worker (python train.py) and with 2 workers (msrun; each worker gets the
machine's cores divided by the workers), then evaluates each best checkpoint with eval.py.
Prints a markdown table: training samples/s of the last epoch (the global batch over all workers),
peak memory per worker (RSS of each worker process, sampled every 0.2 s), test AUC. Not a test.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--synthetic-scale", default="1.0")
    return parser.parse_args(argv)


def peak_rss_of_workers(process, stop, peaks):
    """Sample the RSS of every process running train.py under `process` until `stop` is set;
    msrun itself and its scheduler (MS_ROLE=MS_SCHED, also a train.py) are not workers."""
    while not stop.is_set():
        for child in [process] + process.children(recursive=True):
            try:
                command = child.cmdline()
                if (len(command) > 1 and command[1].endswith("train.py")
                        and child.environ().get("MS_ROLE") != "MS_SCHED"):
                    peaks[child.pid] = max(peaks.get(child.pid, 0), child.memory_info().rss)
            except psutil.Error:
                pass
        stop.wait(0.2)


def train(workers, args, out_dir):
    command = [os.path.join(ROOT, "train.py"), "--dataset", "synthetic", "--synthetic-scale", args.synthetic_scale,
               "--data-root", args.data_root, "--epochs", str(args.epochs), "--patience", str(args.epochs),
               "--out-dir", out_dir, "--quiet"]
    if workers == 1:
        command = [sys.executable] + command
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = ["msrun", f"--worker_num={workers}", f"--local_worker_num={workers}", f"--master_port={port}",
                   f"--log_dir={os.path.join(out_dir, 'msrun_logs')}", "--join=True"] + command
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop, peaks = threading.Event(), {}
    sampler = threading.Thread(target=peak_rss_of_workers, args=(psutil.Process(process.pid), stop, peaks))
    sampler.start()
    _, stderr = process.communicate()
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    with open(os.path.join(out_dir, "train_metrics.json")) as f:
        metrics = json.load(f)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), "--ckpt",
                             os.path.join(out_dir, "IntTower.ckpt"), "--data-root", args.data_root, "--out-dir",
                             out_dir, "--auc-log", os.path.join(out_dir, "auc.log"), "--quiet"],
                            capture_output=True, text=True, check=True)
    return metrics, sorted(peaks.values()), result.stdout.strip()


def main(argv=None):
    args = parse_args(argv)
    # generate and cache the data once, so that neither run pays for it
    subprocess.run([sys.executable, os.path.join(ROOT, "get_dataset.py"), "--dataset", "synthetic",
                    "--synthetic-scale", args.synthetic_scale, "--data-root", args.data_root, "--stats", "--quiet"],
                   check=True, stdout=subprocess.DEVNULL)
    rows = []
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as out_dir:
            start = time.time()
            metrics, peaks, evaluation = train(workers, args, out_dir)
            rows.append((workers, metrics, peaks, evaluation, time.time() - start))
            print(f"{workers} worker(s): {evaluation} ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"{cpu}, {os.cpu_count()} cores; synthetic ML-1M shape (scale {args.synthetic_scale}), default IntTower, "
          f"global batch 2048, {args.epochs} epochs")
    print("| workers | threads per worker | samples/s, last epoch | epoch seconds | peak RSS per worker, MB | test |")
    print("| ---: | ---: | ---: | ---: | --- | --- |")
    for workers, metrics, peaks, evaluation, _ in rows:
        last = metrics["epochs"][-1]
        threads = "default (all cores)" if workers == 1 else str(max(1, (os.cpu_count() or 1) // workers))
        print(f"| {workers} | {threads} | {last['samples_per_s']:,.0f} | {last['seconds']:.1f} | "
              f"{', '.join(f'{p / 2**20:.0f}' for p in peaks)} | {evaluation} |")


if __name__ == "__main__":
    main()
