"""What the faiss index costs and loses at scale: the top 100 of a trained IntTower over catalogues of
the checkpoint's real movies and of 20,000, 100,000 and 1,000,000 items, the faiss union + rerank
(retrieval.HeadIndex) against the exact MaxSim top 100 (retrieval.exact_top_k).

The larger catalogues are the real movies plus synthetic ones: random valid item features drawn
within the schema's ranges (benchmarks/bench_prerank.py's random_features) run through the
checkpoint's item tower, so that their heads have the trained tower's distribution. The queries are
the heads of --users real users of the checkpoint's data. Per catalogue size and index setting:
recall of the exact top 100 (the share of each user's exact top 100 the index returns, averaged over
the users), p50 / p99 latency of one user's request (their heads in, top 100 out: the faiss search,
the union and the exact rescoring; the user tower is not included, benchmarks/bench_prerank.py
times it), build time and the index's memory. The exact search is timed the same way.

Index settings: a flat inner-product index up to 100,000 items (an exact search per head: only
--neighbours, the k' nearest heads per user head on average, is approximate); IVF-Flat and IVF-SQ8 with
retrieval.ivf_lists lists (or --lists) on the synthetic catalogues, sweeping nprobe x k'; HNSW (on the
L2 reduction, retrieval.HeadIndex) at --hnsw-sizes, sweeping efSearch x k'. The fastest setting
that reaches a recall of 0.95 at each size is marked.

python benchmarks/bench_retrieval.py --ckpt RUN/IntTower.ckpt [--data-root data] [--sizes 20000 100000 1000000]
    prints the CPU and a markdown table, writes --json (default benchmarks/retrieval_scale.json) and
    the recall-vs-latency picture --png (default benchmarks/retrieval_recall_latency.png).
Not a test; run it on an otherwise idle machine.
"""
import argparse
import itertools
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from bench_prerank import cpu_name, latency, random_features  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402 (installed with scikit-learn)

import get_dataset  # noqa: E402
import ms_util  # noqa: E402
import retrieval  # noqa: E402
import util  # noqa: E402
from features import item_input_names, user_input_names  # noqa: E402
from model import MethodCell  # noqa: E402
from networks import model_from_checkpoint, run_checkpoint  # noqa: E402
from serving import by_head  # noqa: E402

TOP = 100  # the top K compared with the exact one
FLAT_MAX_ITEMS = 100_000  # the flat index is measured up to this catalogue size
RECALL_AIM, LATENCY_AIM_MS = 0.95, 10.0  # the aim at 1,000,000 items
KIND_LABELS = {"exact": "exact", "flat": "flat", "ivf": "IVF-Flat", "ivf_sq8": "IVF-SQ8", "hnsw": "HNSW (L2 reduction)"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="an IntTower (or other tower model) checkpoint (default: the best "
                                       "checkpoint of the run in --out-dir)")
    parser.add_argument("--out-dir", default="output", help="the run's folder (default output/)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000, 1_000_000],
                        help="catalogue sizes beyond the real one (default 20000 100000 1000000)")
    parser.add_argument("--users", type=int, default=200, help="real users whose heads query (default 200)")
    parser.add_argument("--neighbours", type=int, nargs="+", default=[100, 200, 400, 800], help="k' values swept")
    parser.add_argument("--probes", type=int, nargs="+", default=[4, 8, 16, 24, 32, 64], help="IVF nprobe values swept")
    parser.add_argument("--ivf-kinds", nargs="+", choices=("ivf", "ivf_sq8"), default=["ivf", "ivf_sq8"],
                        help="IVF indexes measured (retrieval.HeadIndex kinds; default both)")
    parser.add_argument("--lists", type=int, nargs="+", default=[0],
                        help="IVF list counts, one index of each IVF kind each (0 = retrieval.ivf_lists)")
    parser.add_argument("--hnsw-sizes", type=int, nargs="*", default=[100_000],
                        help="catalogue sizes at which HNSW is measured too (default 100000)")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[200, 400, 800], help="HNSW efSearch swept")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads per request, faiss's and numpy's (default 1: one request per core; README, "
                             "Retrieval, says why)")
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "retrieval_scale.json"))
    parser.add_argument("--png", default=os.path.join(ROOT, "benchmarks", "retrieval_recall_latency.png"))
    get_dataset.add_data_args(parser)
    return parser.parse_args(argv)


def catalogue_heads(net, config, schema, real_heads, size, rng):
    """The real items' heads followed by synthetic items' (the item tower over random valid features)
    up to `size` items."""
    names = item_input_names(config)
    synthetic = random_features(names, schema, size - len(real_heads), rng)
    return np.concatenate([real_heads, ms_util.predict(MethodCell(net, "item_heads"), synthetic, names)])


def user_requests(user_heads):
    """One user's heads per call, cycling through the users."""
    users = itertools.cycle(range(len(user_heads)))
    return lambda: user_heads[next(users)][None]


def measure_index(index, user_heads, exact_rows, setting, args):
    """One table row per k' at the index's current search setting."""
    rows = []
    for neighbours in args.neighbours:
        found, _ = index.top_k(user_heads, TOP, neighbours)
        recall = float(retrieval.recall_at_k(found, list(exact_rows), TOP).mean())
        next_user = user_requests(user_heads)
        p50, p99 = latency(lambda: index.top_k(next_user(), TOP, neighbours), len(user_heads))
        rows.append(dict(setting, neighbours=neighbours, recall=recall, p50_ms=p50, p99_ms=p99))
        util.log(f"  {setting} k'={neighbours}: recall {recall:.4f}, p50 {p50:.2f} ms")
    return rows


def measure_size(item_heads, user_heads, args, synthetic):
    """Every index setting at one catalogue size, and the exact search -> rows. IVF is measured on the
    `synthetic` (large) catalogues only."""
    size = len(item_heads)
    item_heads_by_head = by_head(item_heads)
    exact_rows, _ = retrieval.exact_top_k(user_heads, item_heads_by_head, TOP)
    next_user = user_requests(user_heads)
    exact_repeats = max(10, min(len(user_heads), int(2e7 // size)))
    p50, p99 = latency(lambda: retrieval.exact_top_k(next_user(), item_heads_by_head, TOP), exact_repeats)
    rows = [dict(items=size, index="exact", recall=1.0, p50_ms=p50, p99_ms=p99, build_s=0.0, memory_mb=0.0)]
    util.log(f"{size:,} items: exact p50 {p50:.2f} ms")
    kinds = ([("flat", None)] if size <= FLAT_MAX_ITEMS else []) + (
        [(kind, lists or None) for kind in args.ivf_kinds for lists in args.lists] if synthetic else []) + (
        [("hnsw", None)] if size in args.hnsw_sizes else [])
    for kind, lists in kinds:
        start = time.perf_counter()
        index = retrieval.HeadIndex(item_heads, kind, lists=lists)
        built = dict(items=size, index=kind, build_s=time.perf_counter() - start, memory_mb=index.memory_bytes() / 1e6)
        if kind.startswith("ivf"):
            built["lists"] = index.index.nlist
        settings = {"flat": [None], "hnsw": args.ef_search}.get(kind, args.probes)
        for probes in settings:
            if probes is not None:
                index.set_probes(probes)
            rows += measure_index(index, user_heads, exact_rows, dict(built, probes=probes), args)
        del index
    return rows


def chosen(rows, size):
    """The fastest search (p50), the exact one included, reaching RECALL_AIM at `size`."""
    reaching = [row for row in rows if row["items"] == size and row["recall"] >= RECALL_AIM]
    return min(reaching, key=lambda row: row["p50_ms"])


def setting_label(row):
    if row["index"] == "exact":
        return "exact"
    probes = {"flat": "", "hnsw": f", efSearch {row['probes']}"}.get(row["index"], f", nprobe {row['probes']}")
    lists = f", {row['lists']} lists" if "lists" in row else ""
    return f"{KIND_LABELS[row['index']]}{lists}{probes}, k' {row['neighbours']}"


def print_table(report):
    print(f"{report['cpu']}; faiss {report['faiss_version']}, {report['threads']} thread(s) per request; "
          f"{report['users']} real users' heads ({report['user_heads']} per user) as queries; "
          f"top {TOP}; load average before timing {report['load_average']:.2f}")
    print("| items | index | recall of the exact top 100 | p50 / p99 ms per user | build s | index MB |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    best = {id(chosen(report["rows"], size)) for size in {row["items"] for row in report["rows"]}}
    for row in report["rows"]:
        mark = " **(fastest at 0.95)**" if id(row) in best else ""
        print(f"| {row['items']:,} | {setting_label(row)}{mark} | {row['recall']:.4f} | "
              f"{row['p50_ms']:.2f} / {row['p99_ms']:.2f} | {row['build_s']:.1f} | {row['memory_mb']:.0f} |")


def plot(report, png_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    sizes = sorted({row["items"] for row in report["rows"]})
    colors = dict(zip(sizes, ("tab:green", "tab:blue", "tab:red", "tab:purple", "tab:brown")))
    markers = {"flat": "s", "ivf_sq8": "o", "hnsw": "^"}
    for size in sizes:
        rows = [row for row in report["rows"] if row["items"] == size]
        exact = next(row for row in rows if row["index"] == "exact")
        ax.plot(exact["p50_ms"], 1.0, "*", color=colors[size], markersize=12)
        # IVF-Flat is left out: its recall is IVF-SQ8's (the table has both)
        searched = [row for row in rows if row["index"] not in ("exact", "ivf")]

        def curve_of(row):
            return row["index"], row.get("lists", 0), row["neighbours"]

        for kind, lists, neighbours in sorted({curve_of(row) for row in searched}):
            curve = sorted((row for row in searched if curve_of(row) == (kind, lists, neighbours)),
                           key=lambda row: row["probes"] or 0)
            ax.plot([row["p50_ms"] for row in curve], [row["recall"] for row in curve], marker=markers[kind],
                    color=colors[size], alpha=0.35 + 0.65 * neighbours / max(report["neighbours"]), markersize=4,
                    linewidth=1)
        ax.plot([], [], color=colors[size], label=f"{size:,} items")
    for kind, marker in markers.items():
        sweep = {"flat": "", "ivf_sq8": " (curve: nprobe)", "hnsw": " (curve: efSearch)"}[kind]
        ax.plot([], [], marker, color="gray", label=KIND_LABELS[kind] + sweep)
    ax.plot([], [], "*", color="gray", markersize=10, label="exact MaxSim over every item")
    ax.axhline(RECALL_AIM, color="black", linestyle=":", linewidth=1)
    ax.axvline(LATENCY_AIM_MS, color="black", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("one user's request, p50 ms (log scale)")
    ax.set_ylabel(f"recall of the exact top {TOP}")
    threads = f"{report['threads']} thread{'s' if report['threads'] > 1 else ''} per request"
    ax.set_title(f"IntTower top {TOP}: faiss union + exact rerank against exact MaxSim (darker: more neighbours\n"
                 f"k' per user head); {report['cpu'].split(',')[0]}, {threads}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    util.atomic_write(png_path, lambda tmp: fig.savefig(tmp, dpi=150, format="png"))
    util.log(f"wrote {png_path}")


def main(argv=None):
    args = parse_args(argv)
    util.set_quiet(args.quiet)
    ms_util.setup("CPU")
    # both explicitly: importing MindSpore leaves faiss's OpenMP at one thread, numpy's BLAS at every CPU
    faiss.omp_set_num_threads(args.threads)
    threadpool_limits(args.threads, user_api="blas")
    ckpt = args.ckpt or run_checkpoint(args.out_dir)
    net, config, meta = model_from_checkpoint(ckpt)
    data = get_dataset.load_matching_dataset(meta, config, args)
    rng = np.random.default_rng(0)
    sampled_users = np.sort(rng.permutation(len(data.users["user_id"]))[:args.users])
    sample = {name: values[sampled_users] for name, values in data.users.items()}
    user_heads = ms_util.predict(MethodCell(net, "user_heads"), sample, user_input_names(config))
    real_heads = ms_util.predict(MethodCell(net, "item_heads"), data.items, item_input_names(config))
    report = {"cpu": cpu_name(), "faiss_version": faiss.__version__, "threads": args.threads,
              "checkpoint": os.path.abspath(ckpt), "model": config.model, "dataset": config.dataset,
              "users": len(user_heads), "user_heads": user_heads.shape[1], "item_heads": real_heads.shape[1],
              "neighbours": args.neighbours, "load_average": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d"),
              "rows": measure_size(real_heads, user_heads, args, synthetic=False)}
    for size in args.sizes:
        report["rows"] += measure_size(catalogue_heads(net, config, meta["schema"], real_heads, size, rng),
                                       user_heads, args, synthetic=True)
    report["fastest_at_aim"] = {size: chosen(report["rows"], size) for size in [len(real_heads)] + args.sizes}
    print_table(report)
    util.write_json(args.json, report)
    plot(report, args.png)
    return 0


if __name__ == "__main__":
    util.run_cli(main)
