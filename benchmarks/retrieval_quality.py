"""What retrieval quality the tower models give on real users, and how much of a ranking model's top 50
each keeps (the cascade a pre-ranker feeds).

For every test user of a run's data, every model ranks the whole catalogue without the user's
training items (the items they rated in the train split; their valid items stay in):
- the tower models (IntTower, Two-Tower, DSSM, DAT) by the exact MaxSim of their heads
  (retrieval.exact_top_k); IntTower also through the faiss index (retrieval.HeadIndex, the catalogue
  size's default index and retrieval.NEIGHBOURS);
- DCN, a ranking model, by its full network over every (user, item) pair, in batches;
- popularity: the number of positive train ratings of each item, the same ranking for everyone.
Quality: Recall@K and NDCG@K (K = 10, 50, 100) of each user's positive test items that are in the
catalogue (retrieval.recall_at_k, ndcg_at_k), averaged over the users that have one.
Cascade: of DCN's top 50 for a user, the share each ranking's top K (K = 50, 100, 500) holds,
averaged over every test user; a random top K would hold K / (items left for the user).
Each seed's models must share one dataset (the same split): the checkpoints of one seed are checked.

python benchmarks/retrieval_quality.py --runs-dir runs/ml-1m [--layout run_results] [--seeds 1 2 3]
    [--data-root data] [--json benchmarks/retrieval_ml1m.json]
--layout run_results: the strict-protocol runs of benchmarks/run_results.py (RUNS/protocol_strict/seedS,
RUNS/model_two_tower_protocol_strict/seedS, ...); by_model: RUNS/<model>/seedS. Prints markdown
tables (mean ± std over the seeds) and writes every seed's numbers to --json.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from run_results import STRICT, mean_std, model_flags, run_dir  # noqa: E402

import get_dataset  # noqa: E402
import ms_util  # noqa: E402
import retrieval  # noqa: E402
import util  # noqa: E402
from features import input_names, item_input_names, user_input_names  # noqa: E402
from model import MethodCell  # noqa: E402
from model_config import MODEL_LABELS  # noqa: E402
from networks import checkpoint_names, model_from_checkpoint  # noqa: E402
from serving import by_head  # noqa: E402

TOWERS = ("inttower", "two_tower", "dssm", "dat")
RANKER = "dcn"
LABELS = {**MODEL_LABELS, "inttower_faiss": "IntTower, faiss index", "dcn": "DCN (ranking model, full network)",
          "popularity": "popularity (train positives)", "random": "random (expected)"}
QUALITY_KS = (10, 50, 100)
CASCADE_TOP = 50  # the ranking model's top that the cascade view follows
CASCADE_KS = (50, 100, 500)
PAIR_USERS = 256  # users per batch of (user, item) pairs through the ranking model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", required=True, help="folder holding the runs")
    parser.add_argument("--layout", choices=("run_results", "by_model"), default="run_results",
                        help="run_results (default): benchmarks/run_results.py's strict runs; "
                             "by_model: RUNS/<model>/seedS")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--json", help="where every seed's numbers go (default benchmarks/retrieval_<dataset>.json)")
    get_dataset.add_data_args(parser)
    return parser.parse_args(argv)


def checkpoint_path(args, model, seed):
    folder = (run_dir(args.runs_dir, model_flags(model) + STRICT, seed) if args.layout == "run_results"
              else os.path.join(args.runs_dir, model, f"seed{seed}"))
    return os.path.join(folder, checkpoint_names(model)[0])


def load_run(args, model, seed, schema=None):
    """(net, config, meta) of a model's strict run at `seed`; its data must be `schema`'s when given."""
    path = checkpoint_path(args, model, seed)
    net, config, meta = model_from_checkpoint(path)
    if config.model != model or config.protocol != "strict" or config.seed != seed:
        raise util.UsageError(f"{path} is a {config.model} run with protocol {config.protocol}, seed {config.seed}; "
                              f"expected {model}, strict, seed {seed}")
    if schema is not None and any(meta["schema"][key] != schema[key] for key in ("data_hash", "rows", "vocab", "seed")):
        raise util.UsageError(f"{path} was trained on other data than the other models of seed {seed}")
    return net, config, meta


def items_by_user(split, users, selected):
    """Per user of `users` (sorted encoded ids), the item rows (encoded movie id - 1) of the `selected`
    rows of `split`, known movies only, each once."""
    keep = selected & (split["movie_id"] > 0)
    order = np.argsort(split["user_id"][keep], kind="stable")
    user_ids, item_rows = split["user_id"][keep][order], split["movie_id"][keep][order] - 1
    starts, stops = np.searchsorted(user_ids, users, "left"), np.searchsorted(user_ids, users, "right")
    return [np.unique(item_rows[start:stop]) for start, stop in zip(starts, stops)]


def top_of_scores(scores, exclude, k):
    """The top k item rows of a [users, items] score matrix, excluded rows left out."""
    scores = scores.astype(np.float32, copy=True)
    for user, rows in enumerate(exclude):
        scores[user, rows] = -np.inf
    return retrieval.top_k_of(scores, np.broadcast_to(np.arange(scores.shape[1]), scores.shape), k)[0]


def ranking_model_scores(net, config, users, items):
    """The ranking model's probability of every (user, item) pair -> [users, items], in batches of
    PAIR_USERS users."""
    names, item_count = input_names(config), len(items["movie_id"])
    scores = []
    for start in util.progress(range(0, len(users["user_id"]), PAIR_USERS), desc="ranking model", leave=False):
        batch = {name: values[start:start + PAIR_USERS] for name, values in users.items()}
        count = len(batch["user_id"])
        pairs = {name: np.repeat(batch[name], item_count, axis=0) for name in user_input_names(config)}
        pairs.update({name: np.tile(items[name], (count,) + (1,) * (items[name].ndim - 1))
                      for name in item_input_names(config)})
        scores.append(ms_util.predict(net, pairs, names).reshape(count, item_count))
    return np.concatenate(scores)


def tower_rankings(net, config, users, items, exclude, k):
    """(exact top k, for IntTower (faiss index kind, faiss top k) else None) of a tower model."""
    user_heads = ms_util.predict(MethodCell(net, "user_heads"), users, user_input_names(config))
    item_heads = ms_util.predict(MethodCell(net, "item_heads"), items, item_input_names(config))
    exact = retrieval.exact_top_k(user_heads, by_head(item_heads), k, exclude)[0]
    if config.model != "inttower":
        return exact, None
    index = retrieval.HeadIndex(item_heads)
    return exact, (index.kind, index.top_k(user_heads, k, retrieval.NEIGHBOURS, exclude)[0])


def measure_seed(args, seed):
    """{ranking: {metric: value}} and the seed's counts."""
    dcn, dcn_config, meta = load_run(args, RANKER, seed)
    data = get_dataset.load_matching_dataset(meta, dcn_config, args)
    test_users = np.unique(data.test["user_id"][data.test["user_id"] > 0])
    users = {name: values[test_users - 1] for name, values in data.users.items()}  # users table row = id - 1
    items = data.items
    exclude = items_by_user(data.train, test_users, np.ones(len(data.train["user_id"]), bool))
    positives = items_by_user(data.test, test_users, data.test["label"] > 0)
    with_positives = np.array([len(p) > 0 for p in positives])
    deepest = max(max(QUALITY_KS), max(CASCADE_KS))

    util.log(f"seed {seed}: {len(test_users)} test users ({with_positives.sum()} with positive test items in the "
             f"catalogue of {len(items['movie_id'])})")
    rankings = {RANKER: top_of_scores(ranking_model_scores(dcn, dcn_config, users, items), exclude, deepest)}
    train_positives = np.bincount(data.train["movie_id"][data.train["label"] > 0], minlength=len(items["movie_id"]) + 1)
    popularity = np.broadcast_to(train_positives[1:], (len(test_users), len(items["movie_id"])))
    rankings["popularity"] = top_of_scores(popularity, exclude, deepest)
    for model in TOWERS:
        net, config, _ = load_run(args, model, seed, meta["schema"])
        rankings[model], searched = tower_rankings(net, config, users, items, exclude, deepest)
        if searched is not None:
            faiss_index, rankings["inttower_faiss"] = searched
        util.log(f"seed {seed}: {model} ranked")

    relevant = [p for p, keep in zip(positives, with_positives) if keep]
    dcn_top = list(rankings[RANKER][:, :CASCADE_TOP])
    results = {}
    for name, ranked in rankings.items():
        scores = {}
        for k in QUALITY_KS:
            scores[f"recall@{k}"] = float(retrieval.recall_at_k(ranked[with_positives], relevant, k).mean())
            scores[f"ndcg@{k}"] = float(retrieval.ndcg_at_k(ranked[with_positives], relevant, k).mean())
        if name != RANKER:
            for k in CASCADE_KS:
                scores[f"keeps_dcn_top{CASCADE_TOP}@{k}"] = float(retrieval.recall_at_k(ranked, dcn_top, k).mean())
        results[name] = scores
    left = len(items["movie_id"]) - np.array([len(e) for e in exclude])
    results["random"] = {f"keeps_dcn_top{CASCADE_TOP}@{k}": float(np.mean(np.minimum(k, left) / left))
                         for k in CASCADE_KS}
    counts = {"dataset": dcn_config.dataset, "faiss_index": faiss_index, "test_users": int(len(test_users)),
              "users_with_positives": int(with_positives.sum()), "catalogue": int(len(items["movie_id"])),
              "mean_training_items": float(np.mean([len(e) for e in exclude]))}
    return results, counts


def print_tables(report):
    seeds = report["seeds"]
    by_seed = [report["per_seed"][str(seed)]["results"] for seed in seeds]
    quality_names = ["inttower", "inttower_faiss", "two_tower", "dssm", "dat", "popularity", RANKER]
    metrics = [f"{m}@{k}" for m in ("recall", "ndcg") for k in QUALITY_KS]
    counts = report["per_seed"][str(seeds[0])]["counts"]
    print(f"\n{report['dataset']}, strict protocol, seeds {', '.join(map(str, seeds))} (mean ± std); seed {seeds[0]}: "
          f"{counts['test_users']} test users ({counts['users_with_positives']} with positive test items), "
          f"{counts['catalogue']} movies, {counts['mean_training_items']:.0f} training items per user left out; "
          f"IntTower's faiss index: {counts['faiss_index']}, k' {report['neighbours']}")
    print("| ranking | " + " | ".join(m.replace("recall", "Recall").replace("ndcg", "NDCG") for m in metrics) + " |")
    print("| --- |" + " ---: |" * len(metrics))
    for name in quality_names:
        print(f"| {LABELS[name]} | " + " | ".join(mean_std([r[name][m] for r in by_seed]) for m in metrics) + " |")
    cascade = [f"keeps_dcn_top{CASCADE_TOP}@{k}" for k in CASCADE_KS]
    print(f"\nShare of DCN's top {CASCADE_TOP} each ranking's top K keeps:")
    print("| ranking | " + " | ".join(f"top {k}" for k in CASCADE_KS) + " |")
    print("| --- |" + " ---: |" * len(cascade))
    for name in quality_names[:-1] + ["random"]:
        print(f"| {LABELS[name]} | " + " | ".join(mean_std([r[name][m] for r in by_seed]) for m in cascade)
              + " |")


def main(argv=None):
    args = parse_args(argv)
    util.set_quiet(args.quiet)
    ms_util.setup("CPU")
    faiss.omp_set_num_threads(os.cpu_count())  # importing MindSpore leaves faiss's OpenMP at one thread
    per_seed = {}
    for seed in args.seeds:
        start = time.time()
        results, counts = measure_seed(args, seed)
        per_seed[str(seed)] = {"results": results, "counts": counts, "seconds": time.time() - start}
    dataset = per_seed[str(args.seeds[0])]["counts"]["dataset"]
    report = {"dataset": dataset, "protocol": "strict", "seeds": args.seeds, "runs_dir": os.path.abspath(args.runs_dir),
              "layout": args.layout, "neighbours": retrieval.NEIGHBOURS, "date": time.strftime("%Y-%m-%d"),
              "per_seed": per_seed}
    print_tables(report)
    path = args.json or os.path.join(ROOT, "benchmarks", f"retrieval_{dataset.replace('-', '')}.json")
    util.write_json(path, report)
    util.log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    util.run_cli(main)
