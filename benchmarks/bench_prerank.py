"""Pre-ranking latency: one user against N candidate items (N = 1,000 / 10,000 / 100,000).

(a) the full exported model (dynamic-batch MindIR) on N rows: the user's features beside each
    candidate's;
(b) the user tower (MindIR) once, then the scorer over the candidates' cached item heads, through
    MindSpore (the scorer MindIR) and through plain numpy (the matmul form).
Each request is timed end to end (inputs already in memory); p50 and p99 over repeated requests.

python benchmarks/bench_prerank.py [--ckpt output/IntTower.ckpt] [--sizes 1000 10000 100000]
Without --ckpt it times the published network (towers 300-300-128, FE 4 heads x 64) with
untrained weights on ML-1M-shaped vocabularies (the synthetic set's): latency does not depend on the weights. Prints a markdown
table; not a test.
"""
import argparse
import dataclasses
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

import export  # noqa: E402
import get_dataset  # noqa: E402
import ms_util  # noqa: E402
import util  # noqa: E402
from model import IntTower, MethodCell  # noqa: E402
from features import input_names, item_input_names, user_input_names  # noqa: E402
from model_config import Config  # noqa: E402
from networks import model_from_checkpoint  # noqa: E402



def ml1m_shaped_schema(data_root="data"):
    """The feature schema of the synthetic set, which has ML-1M's vocabularies and genre lists."""
    return get_dataset.load_dataset(Config(dataset="synthetic"), data_root).schema


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="time this checkpoint's network (default: the published network, untrained)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000], help="candidate counts")
    parser.add_argument("--repeats", type=int, default=200, help="requests timed per size for (b) (default 200)")
    parser.add_argument("--full-rows", type=int, default=1_000_000,
                        help="(a) is timed over about this many rows per size, at least 5 requests (default 1e6)")
    return parser.parse_args(argv)


def random_features(names, schema, n, rng):
    """n rows of valid random inputs, drawn from the ranges the export signature documents."""
    features = {}
    for entry in export.feature_inputs(names, schema, n):
        if entry["dtype"] == "int32":
            features[entry["name"]] = rng.integers(entry["low"], entry["high"], entry["shape"]).astype(np.int32)
        else:
            features[entry["name"]] = rng.uniform(entry["low"], entry["high"], entry["shape"]).astype(np.float32)
    return features


def numpy_scores(user_heads, item_heads_by_head, bias):
    """The scorer in numpy on a cache laid out item-head first ([V, N, d], transposed once when the
    index is loaded): one [V*N, d] @ [d, U] matmul, an elementwise max over the V contiguous
    [N, U] blocks, a sum over the U user heads (as a matrix-vector product: numpy's sum over a
    short last axis is slower). 0.50 ms instead of 0.63 for a batched matmul + sum, 10,000
    candidates, on the AMD EPYC."""
    heads, n, dim = item_heads_by_head.shape
    similarity = (item_heads_by_head.reshape(heads * n, dim) @ user_heads.T).reshape(heads, n, -1)
    best = np.maximum(similarity[0], similarity[-1])
    for head in similarity[1:-1]:
        np.maximum(best, head, out=best)
    return 1.0 / (1.0 + np.exp(-(best @ np.ones(best.shape[1], best.dtype) + bias)))


def latency(request, repeats):
    """(p50, p99) in ms of `request` over `repeats` calls, after two warm-up calls."""
    request()
    request()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        request()
        times.append(time.perf_counter() - start)
    return tuple(float(np.percentile(times, q)) * 1e3 for q in (50, 99))


def main(argv=None):
    args = parse_args(argv)
    ms.set_context(mode=ms.GRAPH_MODE)
    if args.ckpt:
        net, config, meta = model_from_checkpoint(args.ckpt)
        schema = meta["schema"]
    else:
        ms_util.set_seed(0)
        config, schema = Config(), ml1m_shaped_schema()
        net = IntTower(schema, config)
        net.set_train(False)
    rng = np.random.default_rng(0)
    user_names, item_names = user_input_names(config), item_input_names(config)
    user = random_features(user_names, schema, 1, rng)
    candidates = random_features(item_names, schema, max(args.sizes), rng)
    cache = export.item_heads_of(MethodCell(net, "item_heads"), candidates, item_names)
    heads_per_item, head_dim = cache.shape[1:]
    bias = float(net.bias.asnumpy()[0])

    with tempfile.TemporaryDirectory() as tmp:
        meta = {"schema": schema, "config": dataclasses.asdict(config)}
        files = export.write_serving_models(net, config, meta, os.path.join(tmp, "bench"))
        files["full"] = os.path.join(tmp, "bench.mindir")
        export.write_model(net, export.feature_inputs(input_names(config), schema, None),
                           [dict(export.PROBABILITY, shape=[None])], meta["config"], files["full"], "MINDIR")
        full, user_tower, scorer = (nn.GraphCell(ms.load(files[part])) for part in ("full", "user_tower", "scorer"))

    user_tensors = ms_util.to_tensors(user, user_names)
    util.log(f"network: {'checkpoint ' + args.ckpt if args.ckpt else 'published config, untrained'}; "
             f"user heads {tuple(user_tower(*user_tensors).shape[1:])}, item heads {(heads_per_item, head_dim)}; "
             f"load average before timing {os.getloadavg()[0]:.2f}")
    rows = []
    for n in args.sizes:
        full_inputs = tuple(Tensor(np.repeat(user[name], n, axis=0)) for name in user_names) + ms_util.to_tensors(
            candidates, item_names, 0, n)
        cache_tensor = Tensor(cache[:n])
        cache_by_head = np.ascontiguousarray(cache[:n].transpose(1, 0, 2))  # as a loaded index holds it

        def full_model():
            return full(*full_inputs).asnumpy()

        def mindspore_split():
            return scorer(user_tower(*user_tensors)[0], cache_tensor).asnumpy()

        def numpy_split():
            return numpy_scores(user_tower(*user_tensors).asnumpy()[0], cache_by_head, bias)

        agreement = max(float(np.abs(full_model() - split()).max()) for split in (mindspore_split, numpy_split))
        full_repeats = max(5, min(args.repeats, args.full_rows // n))
        a, b_ms, b_np = (latency(full_model, full_repeats), latency(mindspore_split, args.repeats),
                         latency(numpy_split, args.repeats))
        rows.append((n, a, b_ms, b_np, full_repeats))
        util.log(f"N={n}: done ({full_repeats} + 2x{args.repeats} requests; max |(a) - (b)| = {agreement:.2g})")
    user_p50 = latency(lambda: user_tower(*user_tensors).asnumpy(), args.repeats)[0]

    print(f"mindspore {ms.__version__}, {os.cpu_count()} CPUs; user tower alone: {user_p50:.2f} ms p50; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| candidates | (a) full model p50 / p99 ms | (b) user tower + scorer MindIR p50 / p99 ms | "
          "(b) user tower + numpy scorer p50 / p99 ms | (a) / (b) numpy, p50 | (a) requests |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, a, b_ms, b_np, full_repeats in rows:
        print(f"| {n:,} | {a[0]:.2f} / {a[1]:.2f} | {b_ms[0]:.2f} / {b_ms[1]:.2f} | {b_np[0]:.2f} / {b_np[1]:.2f} "
              f"| {a[0] / b_np[0]:.0f}x | {full_repeats} |")


if __name__ == "__main__":
    main()
