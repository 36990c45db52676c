"""Rerun the README's results tables: train.py + eval.py for every row, over several seeds.

python benchmarks/run_results.py [--dataset ml-1m] [--groups models protocols ...] [--seeds 1 2 3]
                                 [--runs-dir runs/ml-1m] [--json benchmarks/results_ml1m.json]

Each (row, seed) is `python train.py --dataset D --seed S --out-dir RUN FLAGS` then
`python eval.py --out-dir RUN --published-metrics`, run as a user runs them. A run the JSON records,
or whose eval_metrics.json exists, is not run again (delete the JSON to rerun everything), an
interrupted training resumes from its -last checkpoint, and the JSON is rewritten after every run,
so that no finished run is lost. Prints one markdown table per group (test AUC and logloss, mean
+- std over the seeds, and the best epoch), and the converged and tuned groups once more beside the
runs each row changes (BEFORE), with the change in test AUC and the training time: the README's tables.
"""
import argparse
import concurrent.futures
import glob
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from model_config import MODEL_LABELS  # noqa: E402
from util import write_json  # noqa: E402

STRICT = ["--protocol", "strict"]
# the paper's Table 2, pre-ranking models first (COLD among them), then the ranking models
TABLE2 = ["two_tower", "dssm", "dat", "cold", "wdl", "deepfm", "dcn", "autoint", "inttower"]
PUBLISHED_MINDSPORE = ["--no-train-mode", "--no-item-lightse", "--no-genres", "--cir-weight", "0",
                       "--init", "mindspore"]
# The PyTorch code adds L2 1e-5 on the embedding tables to a BCE summed over its batch of 2048; Adam's
# steps do not change when the whole loss is divided by 2048, so next to this project's mean BCE the
# same training has L2 1e-5 / 2048
AUTHORS_PYTORCH = ["--fe-source", "inputs", "--user-fe-activation", "none", "--head-num", "32", "--feblock-size",
                   "2048", "--no-input-norm", "--keep-rate", "0.7", "--lr", "0.001", "--l2-embedding", "4.8828125e-09",
                   "--cir-weight", "0", "--init", "pytorch"]


CONVERGED = ["--epochs", "50", "--patience", "3"]  # trained until valid AUC stops improving for 3 epochs


def model_flags(model):
    return ["--model", model] if model != "inttower" else []


# group -> [(row name, flags)], most important first; the flags follow `--dataset D --seed S`
GROUPS = {
    "models": [(f"{model}, {protocol}", model_flags(model) + (STRICT if protocol == "strict" else []))
               for protocol in ("paper", "strict") for model in TABLE2],
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
    # each user's first N ratings by time; batches of 256 for these small training sets
    "sparse": [(f"{name}, first {n} ratings per user",
                flags + STRICT + ["--first-ratings", str(n), "--batch-size", "256"])
               for n in (10, 20) for name, flags in (("IntTower", []), ("Two-Tower", ["--model", "two_tower"]))],
    # the defaults (weight 1, temperature 0.07) are the plain strict run
    "cir": [(f"CIR weight {w}", STRICT + (["--cir-weight", w] if w != "1" else []))
            for w in ("0", "0.1", "0.3", "1", "3")]
    + [(f"CIR temperature {t}", STRICT + (["--cir-temperature", t] if t != "0.07" else []))
       for t in ("0.05", "0.07", "0.2", "0.5")],
    "faithfulness": [
        ("IntTower, strict", STRICT),
        # the published settings as a whole first, then one difference at a time
        ("the published MindSpore training", STRICT + PUBLISHED_MINDSPORE),
        ("the authors' PyTorch settings", STRICT + AUTHORS_PYTORCH),
        ("the published MindSpore training, paper protocol", PUBLISHED_MINDSPORE),
        ("the authors' PyTorch settings, paper protocol", AUTHORS_PYTORCH),
        ("user FE projections linear", STRICT + ["--user-fe-activation", "none"]),
        ("FE-Block on the user layers' inputs", STRICT + ["--fe-source", "inputs"]),
        ("Light-SE on the user tower only", STRICT + ["--no-item-lightse"]),
        ("no input BatchNorm", STRICT + ["--no-input-norm"]),
        ("trained in inference mode", STRICT + ["--no-train-mode"]),
        ("MindSpore 1.8 initialisation", STRICT + ["--init", "mindspore"]),
        ("PyTorch initialisation", STRICT + ["--init", "pytorch"]),
    ],
    "converged": [(f"{model}, strict, to convergence", model_flags(model) + STRICT + CONVERGED) for model in TABLE2],
    # "tuned": each model with the settings benchmarks/tune.py chose on validation (tuned_rows)
}


# the converged and tuned groups are also printed beside what each row changes (the README's tables):
# the same model at the published budget, or trained to convergence with its published settings
BEFORE = {"converged": ("published budget", STRICT), "tuned": ("converged", STRICT + CONVERGED)}


def tuned_rows(dataset, path):
    """The tuned group: every model benchmarks/tune.py has chosen settings for (in `path`), trained to
    convergence."""
    if not os.path.isfile(path):
        raise SystemExit(f"no {path}: run benchmarks/tune.py --dataset {dataset} first")
    with open(path) as f:
        chosen = json.load(f)
    return [(f"{model}, strict, tuned", model_flags(model) + STRICT + CONVERGED + chosen[model]["flags"])
            for model in TABLE2 if model in chosen]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-1m", help="dataset of every run (default ml-1m)")
    parser.add_argument("--data-root", default="data", help="default data/")
    parser.add_argument("--groups", nargs="+", choices=list(GROUPS) + ["tuned"], default=list(GROUPS),
                        help="default: all but tuned")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="default 1 2 3")
    parser.add_argument("--runs-dir", help="where runs go (default runs/<dataset>)")
    parser.add_argument("--json", help="write every run here (default benchmarks/results_<dataset>.json)")
    parser.add_argument("--tuned", help="the tuned group's settings (default benchmarks/tuned_<dataset>.json)")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: print the tables of the runs --json records (a row with fewer seeds "
                             "says so)")
    parser.add_argument("--jobs", type=int, choices=range(1, 33), default=1, metavar="N",
                        help="runs at a time, each on cores/jobs CPU threads (two one-thread runs train more "
                             "samples per second in all than one two-thread run; see README)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="flags added to every train.py run (e.g. --epochs 50 --patience 3), and to the run "
                             "folders' names")
    return parser.parse_args(argv)


def run_dir(runs_dir, flags, seed):
    """One folder per (flags, seed): the flags spelled out, so a row's runs are found again."""
    name = "_".join(flag.lstrip("-") for flag in flags) or "default"
    return os.path.join(runs_dir, name, f"seed{seed}")


def train_and_eval(args, flags, seed, out_dir):
    """The run's (eval_metrics, train_metrics), training and evaluating it unless it was; an
    interrupted training resumes from its -last checkpoint."""
    metrics_path = os.path.join(out_dir, "eval_metrics.json")
    if not os.path.isfile(metrics_path):
        common = ["--data-root", args.data_root, "--quiet"]
        threads = ["--threads", str(max(1, os.cpu_count() // args.jobs))] if args.jobs > 1 else []
        resume = ["--resume"] if glob.glob(os.path.join(out_dir, "*-last.ckpt")) else []
        for command in ([os.path.join(ROOT, "train.py"), "--dataset", args.dataset, "--seed", str(seed),
                         "--out-dir", out_dir, *flags, *threads, *resume, *common],
                        [os.path.join(ROOT, "eval.py"), "--out-dir", out_dir, "--auc-log",
                         os.path.join(out_dir, "auc.log"), "--published-metrics", *common]):
            result = subprocess.run([sys.executable, *command], capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    with open(metrics_path) as f, open(os.path.join(out_dir, "train_metrics.json")) as g:
        return json.load(f), json.load(g)


def summary(name, flags, seed, evaluation, training):
    """What the JSON keeps of one run."""
    config, epochs = evaluation["config"], training["epochs"]
    valid = [e["valid_auc"] for e in epochs]
    return {"name": name, "model": config["model"], "protocol": config["protocol"], "split": config["split"],
            "flags": flags, "seed": seed, "test_auc": evaluation["test_auc"],
            "test_logloss": evaluation["test_logloss"], "published": evaluation.get("published", {}),
            "best_epoch": training["best_epoch"], "epochs": len(epochs),
            "train_seconds": sum(e["seconds"] + e.get("valid_seconds", 0) for e in epochs),
            "valid_auc": valid}


def mean_std(values):
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def print_changes(group, rows, runs, seeds, extra):
    """One line per model of `group`: its test AUC beside BEFORE's run of the same model, the change in
    the mean, and the best epochs and mean training time of its seeds."""
    before_name, before_flags = BEFORE[group]
    print(f"\n### {group}, against {before_name}\n")
    print(f"| model | {before_name} AUC | {group} AUC | logloss | change | best epochs | training time, min |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, flags, results in rows:
        if not results:
            continue
        model = results[0]["model"]
        before = [runs[key] for key in ((tuple(model_flags(model) + before_flags + extra), seed) for seed in seeds)
                  if key in runs]
        auc = [r["test_auc"] for r in results]
        before_auc = [r["test_auc"] for r in before]
        seeds_run = "" if len(results) == len(seeds) else f" ({len(results)} of {len(seeds)} seeds)"
        print(f"| {MODEL_LABELS[model]} | {mean_std(before_auc) if before else 'not run'} | {mean_std(auc)}{seeds_run} | "
              f"{mean_std([r['test_logloss'] for r in results])} | "
              f"{f'{np.mean(auc) - np.mean(before_auc):+.4f}' if before else ''} | "
              f"{', '.join(str(r['best_epoch']) for r in results)} | "
              f"{np.mean([r['train_seconds'] for r in results]) / 60:.0f} |")


def main(argv=None):
    args = parse_args(argv)
    runs_dir = args.runs_dir or os.path.join("runs", args.dataset)
    json_path = args.json or os.path.join(ROOT, "benchmarks", f"results_{args.dataset.replace('-', '')}.json")
    previous = []
    if os.path.isfile(json_path):  # runs of other groups or seeds stay in the file
        with open(json_path) as f:
            previous = json.load(f)["runs"]
    runs = {(tuple(r["flags"]), r["seed"]): r for r in previous}

    tuned = args.tuned or os.path.join(ROOT, "benchmarks", f"tuned_{args.dataset.replace('-', '')}.json")
    tables = [(group, [(name, flags + args.extra)
                       for name, flags in (tuned_rows(args.dataset, tuned) if group == "tuned" else GROUPS[group])])
              for group in args.groups]
    if not args.report:
        pending = {}  # (flags, seed) -> (group, row name), in the tables' order, each run once
        for group, rows in tables:
            for name, flags in rows:
                for seed in args.seeds:
                    if (tuple(flags), seed) not in runs:  # the JSON's runs are done, their folders or not
                        pending.setdefault((tuple(flags), seed), (group, name))
        lock = threading.Lock()

        def run(key):
            (flags, seed), (group, name) = key, pending[key]
            start = time.time()
            evaluation, training = train_and_eval(args, list(flags), seed, run_dir(runs_dir, flags, seed))
            with lock:
                runs[key] = summary(name, list(flags), seed, evaluation, training)
                write_json(json_path, {"dataset": args.dataset, "runs": list(runs.values())})
                print(f"{group} | {name} | seed {seed}: test_auc={evaluation['test_auc']:.4f} "
                      f"({time.time() - start:.0f} s)", file=sys.stderr, flush=True)

        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            for done in [pool.submit(run, key) for key in pending]:
                done.result()
    tables = [(group, [(name, flags, [runs[(tuple(flags), seed)] for seed in args.seeds
                                      if (tuple(flags), seed) in runs])
                       for name, flags in rows])
              for group, rows in tables]
    for group, rows in tables:
        print(f"\n### {group}\n")
        print("| run | flags | test AUC | test logloss | best epoch |")
        print("| --- | --- | --- | --- | --- |")
        for name, flags, results in rows:
            if not results:
                continue
            seeds = "" if len(results) == len(args.seeds) else f" ({len(results)} of {len(args.seeds)} seeds)"
            print(f"| {name}{seeds} | `{' '.join(flags)}` | {mean_std([r['test_auc'] for r in results])} | "
                  f"{mean_std([r['test_logloss'] for r in results])} | "
                  f"{', '.join(str(r.get('best_epoch', '?')) for r in results)} |")
        if group in BEFORE:
            print_changes(group, rows, runs, args.seeds, args.extra)
    if not args.report:
        print(f"\nwrote {json_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
