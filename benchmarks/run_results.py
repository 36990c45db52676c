"""Rerun the README's results tables: train.py + eval.py for every row, over several seeds.

python benchmarks/run_results.py [--dataset ml-100k] [--groups protocols ablations ...] [--seeds 1 2 3]
                                 [--runs-dir runs/ml-100k] [--json benchmarks/results_ml100k.json]

Each (row, seed) is `python train.py --dataset D --seed S --out-dir RUN FLAGS` then
`python eval.py --ckpt RUN/IntTower.ckpt --published-metrics`, run as a user runs them. A run whose
eval_metrics.json exists is reused, so an interrupted rerun continues where it stopped. Prints one
markdown table per group (test AUC and logloss, mean +- std over the seeds) and writes every run
to --json. With ML-1M in data/ml-1m/, `--dataset ml-1m` reruns the same tables on it.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRICT = ["--protocol", "strict"]
MODELS = ["dssm", "dat", "cold", "wdl", "deepfm", "dcn", "autoint"]

# group -> [(row name, flags)]; the flags follow `--dataset D --seed S`
GROUPS = {
    "protocols": [
        ("IntTower, paper", []),
        ("Two-Tower, paper", ["--model", "two_tower"]),
        ("IntTower, strict", STRICT),
        ("Two-Tower, strict", ["--model", "two_tower"] + STRICT),
        ("IntTower, strict temporal", STRICT + ["--split", "temporal"]),
        ("Two-Tower, strict temporal", ["--model", "two_tower"] + STRICT + ["--split", "temporal"]),
    ],
    "ablations": [
        ("IntTower, strict", STRICT),
        ("no Light-SE", STRICT + ["--no-lightse"]),
        ("FE-Block on the last layer only", STRICT + ["--fe-layers", "last"]),
        ("no CIR", STRICT + ["--cir-weight", "0"]),
        ("no genres", STRICT + ["--no-genres"]),
    ],
    # the defaults (weight 1, temperature 0.07) are the plain strict run
    "cir": [(f"CIR weight {w}", STRICT + (["--cir-weight", w] if w != "1" else [])) for w in ("0", "0.1", "0.3", "1", "3")]
    + [(f"CIR temperature {t}", STRICT + (["--cir-temperature", t] if t != "0.07" else []))
       for t in ("0.05", "0.07", "0.2")],
    "faithfulness": [
        ("IntTower, strict", STRICT),
        ("user FE projections linear", STRICT + ["--user-fe-activation", "none"]),
        ("FE-Block on the user layers' inputs", STRICT + ["--fe-source", "inputs"]),
        ("Light-SE on the user tower only", STRICT + ["--no-item-lightse"]),
        ("no input BatchNorm", STRICT + ["--no-input-norm"]),
        ("trained in inference mode", STRICT + ["--no-train-mode"]),
        ("the published MindSpore training", STRICT + ["--no-train-mode", "--no-item-lightse", "--no-genres",
                                                       "--cir-weight", "0"]),
        ("the authors' PyTorch settings", STRICT + ["--fe-source", "inputs", "--user-fe-activation", "none",
                                                    "--head-num", "32", "--feblock-size", "2048", "--no-input-norm",
                                                    "--keep-rate", "0.7", "--lr", "0.001", "--l2-embedding", "1e-5"]),
    ],
    # each user's first 10 ratings by time: about 4,500 training rows, so batches of 256
    "sparse": [
        ("IntTower, first 10 ratings per user", STRICT + ["--first-ratings", "10", "--batch-size", "256"]),
        ("Two-Tower, first 10 ratings per user", ["--model", "two_tower"] + STRICT
         + ["--first-ratings", "10", "--batch-size", "256"]),
    ],
    "models": [(f"{model}, {protocol}", (["--model", model] if model != "inttower" else [])
                + (STRICT if protocol == "strict" else []))
               for model in ["two_tower"] + MODELS + ["inttower"] for protocol in ("paper", "strict")],
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k", help="dataset of every run (default ml-100k)")
    parser.add_argument("--data-root", default="data", help="default data/")
    parser.add_argument("--groups", nargs="+", choices=list(GROUPS), default=list(GROUPS), help="default: all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="default 1 2 3")
    parser.add_argument("--runs-dir", help="where runs go (default runs/<dataset>)")
    parser.add_argument("--json", help="write every run here (default benchmarks/results_<dataset>.json)")
    return parser.parse_args(argv)


def run_dir(runs_dir, flags, seed):
    """One folder per (flags, seed): the flags spelled out, so a row's runs are found again."""
    name = "_".join(flag.lstrip("-") for flag in flags) or "default"
    return os.path.join(runs_dir, name, f"seed{seed}")


def train_and_eval(args, flags, seed, out_dir):
    """The run's eval_metrics.json, training and evaluating it unless it exists."""
    metrics_path = os.path.join(out_dir, "eval_metrics.json")
    if not os.path.isfile(metrics_path):
        common = ["--data-root", args.data_root, "--quiet"]
        for command in ([os.path.join(ROOT, "train.py"), "--dataset", args.dataset, "--seed", str(seed),
                         "--out-dir", out_dir, *flags, *common],
                        [os.path.join(ROOT, "eval.py"), "--ckpt", os.path.join(out_dir, "IntTower.ckpt"),
                         "--out-dir", out_dir, "--auc-log", os.path.join(out_dir, "auc.log"), "--published-metrics",
                         *common]):
            result = subprocess.run([sys.executable, *command], capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    with open(metrics_path) as f:
        return json.load(f)


def mean_std(values):
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def main(argv=None):
    args = parse_args(argv)
    runs_dir = args.runs_dir or os.path.join("runs", args.dataset)
    json_path = args.json or os.path.join(ROOT, "benchmarks", f"results_{args.dataset.replace('-', '')}.json")
    runs, done = [], set()
    for group in args.groups:
        rows = []
        for name, flags in GROUPS[group]:
            results = []
            for seed in args.seeds:
                start = time.time()
                metrics = train_and_eval(args, flags, seed, run_dir(runs_dir, flags, seed))
                results.append(metrics)
                print(f"{group} | {name} | seed {seed}: test_auc={metrics['test_auc']:.4f} "
                      f"({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
                if (tuple(flags), seed) not in done:
                    done.add((tuple(flags), seed))
                    config = metrics["config"]
                    runs.append({"name": name, "model": config["model"], "protocol": config["protocol"],
                                 "split": config["split"], "flags": flags, "seed": seed,
                                 "test_auc": metrics["test_auc"], "test_logloss": metrics["test_logloss"],
                                 "published": metrics.get("published", {})})
            rows.append((name, flags, results))
        print(f"\n### {group}\n")
        print("| run | flags | test AUC | test logloss |")
        print("| --- | --- | --- | --- |")
        for name, flags, results in rows:
            print(f"| {name} | `{' '.join(flags)}` | {mean_std([r['test_auc'] for r in results])} | "
                  f"{mean_std([r['test_logloss'] for r in results])} |")
    with open(json_path, "w") as f:
        json.dump({"dataset": args.dataset, "seeds": args.seeds, "runs": runs}, f, indent=1)
        f.write("\n")
    print(f"\nwrote {json_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
