"""Where a pre-ranking request's time goes in MindSpore: the exported MindIR user tower and scorer
under MindSpore's CPU profiler (kernel time per request, by op type), beside the wall time of the
same calls and of a MindIR graph that does almost nothing with the same candidate input (what a
graph call costs before any arithmetic).

python benchmarks/profile_serving.py [--ckpt output/IntTower.ckpt] [--candidates 10000]
Without --ckpt it profiles the published network with untrained weights, as bench_prerank.py does.
Prints markdown tables; not a test.
"""
import argparse
import csv
import dataclasses
import glob
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

import export  # noqa: E402
import ms_util  # noqa: E402
import util  # noqa: E402
from bench_prerank import cpu_name, latency, network, random_features  # noqa: E402
from features import item_input_names, user_input_names  # noqa: E402
from model import MethodCell  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="profile this checkpoint's network (default: the published network, untrained)")
    parser.add_argument("--data-root", default="data", help="for the synthetic set's schema (default data/)")
    parser.add_argument("--candidates", type=int, default=10000, help="candidates per request (default 10,000)")
    parser.add_argument("--repeats", type=int, default=100, help="requests profiled and timed (default 100)")
    return parser.parse_args(argv)


class FirstRowTwice(nn.Cell):
    """A graph with the scorer's candidate input that does almost nothing: the cost of a call."""

    def construct(self, item_heads):
        return item_heads[:1] * 2


def kernel_times(call, repeats, out_dir):
    """{op type: (calls per request, ms per request)} of `call` under MindSpore's CPU profiler."""
    profiler = ms.Profiler(output_path=out_dir)
    for _ in range(repeats):
        call()
    profiler.stop()
    profiler.analyse()
    with open(glob.glob(os.path.join(out_dir, "*", "FRAMEWORK", "cpu_op_type_info_0.csv"))[0]) as f:
        return {row["op_type"]: (int(row["type_occurrences"]) / repeats, float(row["total_compute_time"]) / repeats)
                for row in csv.DictReader(f)}


def main(argv=None):
    args = parse_args(argv)
    util.set_quiet(True)
    ms.set_context(mode=ms.GRAPH_MODE)
    net, config, schema = network(args.ckpt, args.data_root)
    rng = np.random.default_rng(0)
    user_names, item_names = user_input_names(config), item_input_names(config)
    user = ms_util.to_tensors(random_features(user_names, schema, 1, rng), user_names)
    candidates = random_features(item_names, schema, args.candidates, rng)
    cache = Tensor(export.item_heads_of(MethodCell(net, "item_heads"), candidates, item_names))

    with tempfile.TemporaryDirectory() as tmp:
        meta = {"schema": schema, "config": dataclasses.asdict(config)}
        files = export.write_serving_models(net, config, meta, os.path.join(tmp, "profile"))
        ms.export(FirstRowTwice(), Tensor(shape=[None, *cache.shape[1:]], dtype=ms.float32),
                  file_name=os.path.join(tmp, "empty"), file_format="MINDIR")
        files["empty"] = os.path.join(tmp, "empty.mindir")
        user_tower, scorer, empty = (nn.GraphCell(ms.load(files[part])) for part in ("user_tower", "scorer", "empty"))
        user_heads = user_tower(*user)[0]
        calls = {"user tower": lambda: user_tower(*user).asnumpy(),
                 "scorer": lambda: scorer(user_heads, cache).asnumpy(),
                 "user tower + scorer": lambda: scorer(user_tower(*user)[0], cache).asnumpy(),
                 "a graph returning 2 * item_heads[:1]": lambda: empty(cache).asnumpy()}
        walls = {name: latency(call, args.repeats) for name, call in calls.items()}
        profiles = {name: kernel_times(calls[name], args.repeats, os.path.join(tmp, f"profile_{i}"))
                    for i, name in enumerate(("user tower", "scorer"))}

    print(f"{cpu_name()}; mindspore {ms.__version__}; {args.candidates:,} candidates, item heads "
          f"{tuple(cache.shape[1:])}, user heads {tuple(user_heads.shape)}; load average {os.getloadavg()[0]:.2f}")
    print("\n| MindIR call | p50 / p99 ms |\n| --- | ---: |")
    for name, (p50, p99) in walls.items():
        print(f"| {name} | {p50:.3f} / {p99:.3f} |")
    for name, kernels in profiles.items():
        total = sum(ms_per_request for _, ms_per_request in kernels.values())
        print(f"\n{name}: {total:.3f} ms of kernels per request (CPU profiler)\n")
        print("| op | calls | ms |\n| --- | ---: | ---: |")
        for op, (count, ms_per_request) in sorted(kernels.items(), key=lambda item: -item[1][1]):
            print(f"| {op} | {count:g} | {ms_per_request:.3f} |")


if __name__ == "__main__":
    main()
