"""Pre-ranking latency: one user against N candidate items (N = 1,000 / 10,000 / 100,000), by engine,
beside the memory-bandwidth bound of reading the candidates' cached heads.

(a) the full exported model (dynamic-batch MindIR) on N rows: the user's features beside each
    candidate's;
(b) the exported user tower once, then the scorer over the candidates' cached item heads:
    MindIR user tower + MindIR scorer (what Ascend 310 / MindSpore Lite load);
    MindIR user tower + serving.numpy_scores;
    ONNX user tower + ONNX scorer in onnxruntime (export.py --serving --file-format ONNX).
Each request is timed end to end (inputs already in memory); p50 and p99 over repeated requests.
The bound is the bytes of the N candidates' heads over the read bandwidth measured in the same run
(a numpy sum over a 256 MB array): no request can take less time than reading them once.

python benchmarks/bench_prerank.py [--ckpt output/IntTower.ckpt] [--sizes 1000 10000 100000]
Without --ckpt it times the published network (towers 300-300-128, FE 4 heads x 64) with untrained
weights on ML-1M-shaped vocabularies (the synthetic set's): latency does not depend on the weights.
Prints markdown tables; not a test.
"""
import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

import export  # noqa: E402
import get_dataset  # noqa: E402
import ms_util  # noqa: E402
import util  # noqa: E402
from features import input_names, item_input_names, user_input_names  # noqa: E402
from model import IntTower, MethodCell  # noqa: E402
from model_config import Config  # noqa: E402
from networks import model_from_checkpoint  # noqa: E402
from serving import by_head, numpy_scores, onnx_session  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="time this checkpoint's network (default: the published network, untrained)")
    parser.add_argument("--data-root", default="data", help="for the synthetic set's schema (default data/)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000], help="candidate counts")
    parser.add_argument("--repeats", type=int, default=300, help="requests timed per size and engine (default 300)")
    parser.add_argument("--full-rows", type=int, default=1_000_000,
                        help="(a) is timed over about this many rows per size, at least 5 requests (default 1e6)")
    return parser.parse_args(argv)


def cpu_name():
    """The CPU's model name and whether it has AVX-512 (the kinds these machines come in differ)."""
    info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Model name")),
                 platform.processor())
    return f"{model}, {'AVX-512' if 'avx512f' in info else 'AVX2 only (no AVX-512)'}, {os.cpu_count()} CPUs"


def ml1m_shaped_schema(data_root="data"):
    """The feature schema of the synthetic set, which has ML-1M's vocabularies and genre lists."""
    return get_dataset.load_dataset(Config(dataset="synthetic"), data_root).schema


def random_features(names, schema, n, rng):
    """n rows of valid random inputs, drawn from the ranges the export signature documents."""
    features = {}
    for entry in export.feature_inputs(names, schema, n):
        if entry["dtype"] == "int32":
            features[entry["name"]] = rng.integers(entry["low"], entry["high"], entry["shape"]).astype(np.int32)
        else:
            features[entry["name"]] = rng.uniform(entry["low"], entry["high"], entry["shape"]).astype(np.float32)
    return features


def network(ckpt=None, data_root="data"):
    """The checkpoint's network in inference mode, or without one the published network with untrained
    weights on ML-1M-shaped vocabularies -> (net, config, schema)."""
    if ckpt:
        net, config, meta = model_from_checkpoint(ckpt)
        return net, config, meta["schema"]
    ms_util.set_seed(0)
    config, schema = Config(), ml1m_shaped_schema(data_root)
    net = IntTower(schema, config)
    net.set_train(False)
    return net, config, schema


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


def read_bandwidth(megabytes=256, repeats=10):
    """Bytes per second read by a numpy sum over a large float32 array (the best of `repeats`)."""
    array = np.ones(megabytes * (1 << 20) // 4, np.float32)
    best = min(latency(array.sum, 1)[0] for _ in range(repeats))
    return array.nbytes / (best / 1e3)


def main(argv=None):
    args = parse_args(argv)
    util.set_quiet(True)
    ms.set_context(mode=ms.GRAPH_MODE)
    net, config, schema = network(args.ckpt, args.data_root)
    rng = np.random.default_rng(0)
    user_names, item_names = user_input_names(config), item_input_names(config)
    user = random_features(user_names, schema, 1, rng)
    candidates = random_features(item_names, schema, max(args.sizes), rng)
    cache = export.item_heads_of(MethodCell(net, "item_heads"), candidates, item_names)
    bias = float(net.bias.asnumpy()[0])

    with tempfile.TemporaryDirectory() as tmp:
        meta = {"schema": schema, "config": dataclasses.asdict(config)}
        files = export.write_serving_models(net, config, meta, os.path.join(tmp, "bench"), onnx=True)
        files["full"] = os.path.join(tmp, "bench.mindir")
        export.write_model(net, export.feature_inputs(input_names(config), schema, None),
                           [dict(export.PROBABILITY, shape=[None])], meta["config"], files["full"], "MINDIR")
        full, user_tower, scorer = (nn.GraphCell(ms.load(files[part])) for part in ("full", "user_tower", "scorer"))
        user_tower_onnx, scorer_onnx = (onnx_session(files[part]) for part in ("user_tower_onnx", "scorer_onnx"))

    user_tensors = ms_util.to_tensors(user, user_names)
    bandwidth = read_bandwidth()
    rows = []
    for n in args.sizes:
        full_inputs = tuple(Tensor(np.repeat(user[name], n, axis=0)) for name in user_names) + ms_util.to_tensors(
            candidates, item_names, 0, n)
        cached = np.ascontiguousarray(cache[:n])
        cached_tensor = Tensor(cached)
        cached_by_head = by_head(cached)  # as a loaded index holds it for numpy

        engines = {
            "(a) full model, MindIR": lambda: full(*full_inputs).asnumpy(),
            "(b) MindIR user tower + MindIR scorer": lambda: scorer(user_tower(*user_tensors)[0],
                                                                    cached_tensor).asnumpy(),
            "(b) MindIR user tower + numpy scorer": lambda: numpy_scores(user_tower(*user_tensors).asnumpy()[0],
                                                                         cached_by_head, bias),
            "(b) onnxruntime user tower + scorer": lambda: scorer_onnx.run(None, {
                "user_heads": user_tower_onnx.run(None, user)[0][0], "item_heads": cached})[0],
        }
        outputs = [request() for request in engines.values()]
        agreement = max(float(np.abs(outputs[0] - other).max()) for other in outputs[1:])
        timed = {}
        for engine, request in engines.items():
            repeats = max(5, min(args.repeats, args.full_rows // n)) if engine.startswith("(a)") else args.repeats
            timed[engine] = latency(request, repeats)
        bound = cached.nbytes / bandwidth * 1e3
        rows.append((n, timed, bound, agreement))
        util.log(f"N={n}: done (max |(a) - (b)| = {agreement:.2g})")

    print(f"{cpu_name()}; mindspore {ms.__version__}, onnxruntime {onnxruntime.__version__}, numpy {np.__version__}; "
          f"read bandwidth {bandwidth / 1e9:.1f} GB/s; load average {os.getloadavg()[0]:.2f}; "
          f"user heads {tuple(user_tower(*user_tensors).shape[1:])}, item heads {cache.shape[1:]}")
    print("\n| candidates | heads bytes | bandwidth bound ms | " + " | ".join(f"{e} p50 / p99 ms" for e in engines)
          + " | fastest (b) / bound |")
    print("| ---: | ---: | ---: | " + " | ".join("---:" for _ in engines) + " | ---: |")
    for n, timed, bound, agreement in rows:
        fastest = min(p50 for engine, (p50, _) in timed.items() if engine.startswith("(b)"))
        print(f"| {n:,} | {cache[:n].nbytes / 1e6:.1f} MB | {bound:.3f} | "
              + " | ".join(f"{p50:.2f} / {p99:.2f}" for p50, p99 in timed.values()) + f" | {fastest / bound:.1f}x |")


if __name__ == "__main__":
    main()
