"""The paper's efficiency comparison: every model measured in one run, on the published network shape
(ML-1M vocabularies, embeddings 32, MLP 300-300-128; untrained weights: cost does not depend on them)
and, with --tuned, also on the shape benchmarks/tune.py chose for each model, in the same run.

Per model: trainable parameters (and those outside the embedding tables); forward FLOPs per (user,
item) pair and per served candidate; training samples/s of train.py's compiled train step at batch
2048 on random valid inputs, after a warm-up; and the pre-ranking cost of one request, one user
against N candidates (p50 / p99), in the form the model allows: tower models run the exported user
tower MindIR once and the exported scorer MindIR over the candidates' cached item heads (as
benchmarks/bench_prerank.py does); the others run the full exported network (dynamic-batch MindIR)
over the N (user, item) pairs.

python benchmarks/bench_models.py [--quick] [--models ...] [--json benchmarks/models_efficiency.json]
    prints a markdown table and writes the rows to --json. --quick: fewer steps and requests.
python benchmarks/bench_models.py --tuned benchmarks/tuned_ml1m.json --json benchmarks/models_efficiency_tuned.json
    each model twice, on the published shape and on the shape benchmarks/tune.py chose (its MLP width
    above all), one row each, so that the two are compared on one CPU in one run.
python benchmarks/bench_models.py --plot --results benchmarks/results_ml100k.json [--png PATH]
    measures nothing: draws test AUC (strict protocol, random split, mean +- std over seeds, from
    run_results.py's JSON) against the 10,000-candidate p50 latency of the --json rows, one point
    per model found in both, to --png (default benchmarks/auc_vs_latency.png).
Not a test; run it on an otherwise idle machine.
"""
import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

import export  # noqa: E402
import train  # noqa: E402
import ms_util  # noqa: E402
import util  # noqa: E402
from baselines import CrossLayer, FMInteraction, InteractingLayer  # noqa: E402
from bench_prerank import cpu_name, latency, ml1m_shaped_schema, random_features  # noqa: E402
from bench_train import time_steps  # noqa: E402
from model import MethodCell  # noqa: E402
from features import input_names, item_input_names, user_input_names  # noqa: E402
from model_config import MODEL_LABELS, Config, config_from_args  # noqa: E402
from networks import TOWER_MODELS  # noqa: E402

# table order: the tower models, then the models that need the user and the item together
MODELS = ("two_tower", "dssm", "dat", "inttower", "cold", "wdl", "deepfm", "dcn", "autoint")
PLOT_SIZE = 10000  # candidates of the latency the plot uses
TRAIN_BATCHES = 4  # distinct random batches the timed train steps cycle over


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="default: all")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, PLOT_SIZE], help="candidate counts")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few train steps and requests")
    parser.add_argument("--tuned", help="also measure each model with the settings benchmarks/tune.py chose "
                                        "(its JSON, e.g. benchmarks/tuned_ml1m.json)")
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "models_efficiency.json"),
                        help="where the rows are written (and read by --plot)")
    parser.add_argument("--plot", action="store_true", help="draw the AUC / latency picture instead of measuring")
    parser.add_argument("--results", help="--plot: run_results.py's JSON of test AUCs")
    parser.add_argument("--png", default=os.path.join(ROOT, "benchmarks", "auc_vs_latency.png"),
                        help="--plot: the picture (default benchmarks/auc_vs_latency.png)")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# What the architecture costs

def forward_macs(net, field_num):
    """Multiply-adds of one (user, item) pair through the full network: every Dense layer (AutoInt's
    projections once per field), AutoInt's attention scores and weighted sums, DCN's x_l . w, the
    FM term's sums and squares. Not counted: embedding lookups, BatchNorm, activations, the other
    elementwise ops, and the heads' score (see scoring_macs)."""
    macs = 0
    for name, cell in net.cells_and_names():
        if isinstance(cell, InteractingLayer):
            dim = cell.heads * cell.head_dim
            macs += field_num * (4 * dim * dim + 2 * field_num * dim)
        elif isinstance(cell, nn.Dense) and not name.endswith("projections"):
            macs += cell.in_channels * cell.out_channels
        elif isinstance(cell, CrossLayer):
            macs += cell.weight.shape[0]
        elif isinstance(cell, FMInteraction):
            macs += 2 * cell.field_sum.shape[0]
    return macs


def scoring_macs(user_heads, item_heads):
    """A tower model's score of one pair: every user head against every item head."""
    return user_heads.shape[1] * item_heads.shape[1] * user_heads.shape[2]


def embedding_size(net):
    return sum(p.size for p in net.trainable_params() if "embedding_table" in p.name)


# ---------------------------------------------------------------------------------------------
# Measurements

def train_samples_per_s(step, config, schema, rng, steps):
    """train.py's compiled train step on random valid batches of config.batch_size (warm-up first)."""
    names = input_names(config)
    batches = []
    for _ in range(TRAIN_BATCHES):
        features = random_features(names, schema, config.batch_size, rng)
        labels = (rng.random(config.batch_size) < 0.57).astype(np.float32)  # ML-1M's positive rate
        batches.append((Tensor(labels), *ms_util.to_tensors(features, names)))
    step.set_train(True)
    return time_steps(step, batches, steps)


def request_functions(net, config, schema, user, candidates, sizes, tmp):
    """{N: a function running one request of one user against the first N candidates, returning its
    probabilities}, through exported MindIR files, in the form the model allows."""
    meta = {"schema": schema, "config": dataclasses.asdict(config)}
    user_names, item_names = user_input_names(config), item_input_names(config)
    if config.model in TOWER_MODELS:
        cache = export.item_heads_of(MethodCell(net, "item_heads"), candidates, item_names)
        files = export.write_serving_models(net, config, meta, os.path.join(tmp, config.model))
        user_tower, scorer = (nn.GraphCell(ms.load(files[part])) for part in ("user_tower", "scorer"))
        user_tensors = ms_util.to_tensors(user, user_names)

        def tower_request(cached):
            return lambda: scorer(user_tower(*user_tensors)[0], cached).asnumpy()
        return {n: tower_request(Tensor(cache[:n])) for n in sizes}
    path = os.path.join(tmp, config.model + ".mindir")
    export.write_model(net, export.feature_inputs(input_names(config), schema, None),
                       [dict(export.PROBABILITY, shape=[None])], meta["config"], path, "MINDIR")
    full = nn.GraphCell(ms.load(path))

    def full_request(n):
        pairs = tuple(Tensor(np.repeat(user[name], n, axis=0)) for name in user_names) + ms_util.to_tensors(
            candidates, item_names, 0, n)
        return lambda: full(*pairs).asnumpy()
    return {n: full_request(n) for n in sizes}


def model_configs(models, tuned_path=None):
    """[(model, "published" or "tuned", Config)]: each model's published settings, then, given `tuned_path`
    (benchmarks/tune.py's JSON), its tuned ones."""
    chosen = read_json(tuned_path, "--tuned") if tuned_path else {}
    missing = [name for name in models if tuned_path and name not in chosen]
    if missing:
        raise util.UsageError(f"--tuned {tuned_path} has no settings for {', '.join(missing)}: "
                              "pick --models among those it has, or run benchmarks/tune.py for them")
    rows = []
    for name in models:
        rows.append((name, "published", Config(model=name)))
        if tuned_path:
            rows.append((name, "tuned", config_from_args(train.parse_args(["--model", name] + chosen[name]["flags"]))))
    return rows


def measure(name, settings, config, args, schema, rng):
    net, _, step = train.build(schema, config, seed=0)
    samples_per_s = train_samples_per_s(step, config, schema, rng, steps=3 if args.quick else 30)
    net.set_train(False)
    user = random_features(user_input_names(config), schema, 1, rng)
    candidates = random_features(item_input_names(config), schema, max(args.sizes), rng)
    pair_macs = forward_macs(net, getattr(net, "field_num", 0))
    candidate_macs = pair_macs
    if name in TOWER_MODELS:
        first = {key: values[:1] for key, values in candidates.items()}
        heads = (MethodCell(net, "user_heads")(*ms_util.to_tensors(user, user_input_names(config))),
                 MethodCell(net, "item_heads")(*ms_util.to_tensors(first, item_input_names(config))))
        candidate_macs = scoring_macs(*heads)
        pair_macs += candidate_macs
    row = {"model": name, "settings": settings, "serving": "user tower + cached item heads" if name in TOWER_MODELS
           else "full network over the N pairs",
           "parameters": sum(p.size for p in net.trainable_params()),
           "parameters_outside_embeddings": sum(p.size for p in net.trainable_params()) - embedding_size(net),
           "forward_flops_per_pair": 2 * pair_macs, "serving_flops_per_candidate": 2 * candidate_macs,
           "train_samples_per_s": samples_per_s, "latency_ms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        requests = request_functions(net, config, schema, user, candidates, args.sizes, tmp)
        for n, request in requests.items():
            # the exported path must compute what the network computes
            expected = net(*(Tensor(np.repeat(user[key], n, axis=0)) for key in user_input_names(config)),
                           *ms_util.to_tensors(candidates, item_input_names(config), 0, n)).asnumpy()
            agreement = float(np.abs(request() - expected).max())
            repeats = 10 if args.quick else 200
            if name not in TOWER_MODELS:  # about a million rows per size at most
                repeats = max(5, min(repeats, (100_000 if args.quick else 1_000_000) // n))
            p50, p99 = latency(request, repeats)
            row["latency_ms"][str(n)] = {"p50": p50, "p99": p99, "requests": repeats, "max_abs_diff": agreement}
    util.log(f"{name}: {row['train_samples_per_s']:,.0f} samples/s, "
             + ", ".join(f"N={n}: {v['p50']:.2f} ms" for n, v in row["latency_ms"].items()))
    return row


def print_table(report):
    sizes = list(report["rows"][0]["latency_ms"])
    print(f"{report['cpu']}, mindspore {report['mindspore_version']}; train batch {report['batch_size']}; "
          f"load average before timing {report['load_average']:.2f}" + (" (--quick)" if report["quick"] else ""))
    print("| model | parameters | outside embeddings | forward MFLOPs / pair | serving MFLOPs / candidate | "
          "train samples/s | " + " | ".join(f"{int(n):,} candidates p50 / p99 ms" for n in sizes) + " | served as |")
    print("| --- " + "| ---: " * (5 + len(sizes)) + "| --- |")
    for row in report["rows"]:
        latencies = " | ".join(f"{row['latency_ms'][n]['p50']:.2f} / {row['latency_ms'][n]['p99']:.2f}"
                               for n in sizes)
        label = MODEL_LABELS[row["model"]] + (", tuned" if row.get("settings") == "tuned" else "")
        print(f"| {label} | {row['parameters']:,} | {row['parameters_outside_embeddings']:,} | "
              f"{row['forward_flops_per_pair'] / 1e6:.3f} | {row['serving_flops_per_candidate'] / 1e6:.4f} | "
              f"{row['train_samples_per_s']:,.0f} | {latencies} | {row['serving']} |")


# ---------------------------------------------------------------------------------------------
# The picture

def plotted_aucs(results):
    """{model: [test AUC per seed]} of the strict-protocol, random-split runs of each model with its
    default flags (run_results.py's `models` rows)."""
    aucs = {}
    for run in results["runs"]:
        flags = (["--model", run["model"]] if run["model"] != "inttower" else []) + ["--protocol", "strict"]
        if run["protocol"] == "strict" and run["split"] == "random" and run["flags"] == flags:
            aucs.setdefault(run["model"], {})[run["seed"]] = run["test_auc"]  # a run listed twice counts once
    return {model: list(by_seed.values()) for model, by_seed in aucs.items()}


def plot(report, results, png_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    latencies = {row["model"]: row["latency_ms"][str(PLOT_SIZE)]["p50"] for row in report["rows"]
                 if str(PLOT_SIZE) in row["latency_ms"] and row.get("settings", "published") == "published"}
    aucs = plotted_aucs(results)
    models = [model for model in MODELS if model in latencies and model in aucs]
    if not models:
        raise util.UsageError(f"no model has both a {PLOT_SIZE:,}-candidate latency in the efficiency JSON and "
                              "strict-protocol runs in --results; run the benchmark and run_results.py first")
    left_out = sorted(set(latencies) ^ set(aucs))
    if left_out:
        util.log(f"not plotted (latency or AUC missing): {', '.join(left_out)}")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    # labels of near neighbours (by latency) take turns above, below and further below their points
    label_offsets = ((6, 4), (6, -12), (6, -24))
    crowded = 0
    previous = None
    for model in sorted(models, key=latencies.get):
        color = "tab:blue" if model in TOWER_MODELS else "tab:orange"
        mean, std = float(np.mean(aucs[model])), float(np.std(aucs[model]))
        ax.errorbar(latencies[model], mean, yerr=std, fmt="o", color=color, capsize=3)
        near = previous is not None and latencies[model] < 1.3 * previous[0] and abs(mean - previous[1]) < 0.006
        crowded = crowded + 1 if near else 0
        ax.annotate(MODEL_LABELS[model], (latencies[model], mean), textcoords="offset points",
                    xytext=label_offsets[crowded % len(label_offsets)], fontsize=9)
        previous = (latencies[model], mean)
    ax.plot([], [], "o", color="tab:blue", label="tower models: user tower + cached item vectors")
    ax.plot([], [], "o", color="tab:orange", label="COLD and the ranking models: full network over every pair")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(f"one request, 1 user x {PLOT_SIZE:,} candidates: p50 latency, ms (log scale)")
    seeds = sorted({len(values) for values in aucs.values()})
    ax.set_ylabel(f"test AUC (mean ± std over {'/'.join(map(str, seeds))} seeds)")
    ax.set_title(f"{results.get('dataset', 'test set')}, strict protocol: accuracy against serving cost\n"
                 f"latency on {report['cpu']}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    util.atomic_write(png_path, lambda tmp: fig.savefig(tmp, dpi=150, format="png"))
    util.log(f"wrote {png_path} ({len(models)} models)")


def read_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise util.UsageError(f"cannot read {what} {path} ({err})") from None


def main(argv=None):
    args = parse_args(argv)
    if args.plot:
        if not args.results:
            raise util.UsageError("--plot needs --results FILE (run_results.py's JSON of test AUCs)")
        report = read_json(args.json, "the efficiency rows (run the benchmark without --plot first)")
        plot(report, read_json(args.results, "--results"), args.png)
        return 0
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(0)
    schema = ml1m_shaped_schema()
    report = {"cpu": cpu_name(), "mindspore_version": ms.__version__, "quick": args.quick,
              "tuned": args.tuned,
              "batch_size": Config().batch_size, "load_average": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d"),
              "rows": [measure(*row, args, schema, rng) for row in model_configs(args.models, args.tuned)]}
    print_table(report)
    util.write_json(args.json, report)
    util.log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    util.run_cli(main)
