"""Export a checkpoint for inference: the full model as MindIR (default) or ONNX, a JSON signature
beside every file, and with --serving the pre-ranking split (user tower, item tower, scorer and
the item index of every item's cached heads).

python export.py [--ckpt output/IntTower.ckpt] [--file-format MINDIR|ONNX|AIR] [--batch-size 2048]
                 [--file-name output/IntTower] [--serving] [--verify]
writes output/IntTower.mindir + output/IntTower.mindir.json (without --ckpt: the best checkpoint of
the run in --out-dir, named after its model); --serving adds
output/IntTower_{user_tower,item_tower,scorer}.mindir (+ .json) and output/IntTower_item_index.npz.
--batch-size 0 exports the full model with a dynamic batch axis (MindIR only); the serving files
always have a dynamic batch (towers) or a dynamic candidate count (scorer). A plain export needs
only the checkpoint; --serving (the item table) and --verify (the test split) also read the
checkpoint's dataset under --data-root.
"""
import argparse
import os

import mindspore as ms
import mindspore.onnx
import numpy as np
from mindspore import Tensor, nn

import get_dataset
import ms_util
import serving
import util
from features import BY_NAME, input_names, item_input_names, user_input_names
from model import MethodCell
from networks import TOWER_MODELS, inference_copy, model_from_checkpoint, run_checkpoint

EXTENSIONS = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}
TOLERANCE = 1e-5  # --verify fails above this max absolute difference
VERIFY_ROWS = 2048  # test rows per verification batch
VERIFY_USERS = 100  # users whose test items check the serving path against the full model
# the full model's and the scorer's output (each file sets its shape)
PROBABILITY = {"name": "probability", "dtype": "float32", "shape": None,
               "feature": "click probability of each (user, item) row"}

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="checkpoint (default: the best checkpoint of the run in --out-dir)")
    parser.add_argument("--out-dir", default="output", help="the run's folder (default output/)")
    parser.add_argument("--file-format", choices=list(EXTENSIONS), default="MINDIR",
                        help="MINDIR (default), ONNX (fixed batch; runs in onnxruntime) or AIR (Ascend only)")
    parser.add_argument("--batch-size", type=int, default=2048,
                        help="batch axis of the full model (default 2048, the published export); "
                             "0 = dynamic batch (MINDIR only)")
    parser.add_argument("--file-name",
                        help="output path without extension (default: the checkpoint's, e.g. output/IntTower): "
                             "writes NAME.mindir or NAME.onnx, each with NAME.<ext>.json")
    parser.add_argument("--serving", action="store_true",
                        help="also write NAME_user_tower.mindir, NAME_item_tower.mindir, NAME_scorer.mindir "
                             "(MindIR whatever --file-format says) and NAME_item_index.npz; with --file-format ONNX "
                             "also NAME_user_tower.onnx and NAME_scorer.onnx, the fastest way to serve on CPU")
    parser.add_argument("--verify", action="store_true",
                        help=f"reload every written file and compare with the checkpoint on test rows; "
                             f"exit 1 if a max absolute difference exceeds {TOLERANCE:g}")
    parser.add_argument("--device-target", choices=["CPU", "GPU", "Ascend"], default="CPU", help="default CPU")
    get_dataset.add_data_args(parser)  # the checkpoint's data: read only for --serving and --verify
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Signatures: the sidecar entries also drive the export's input shapes, so the two always agree

def feature_inputs(names, schema, batch):
    """Sidecar entries of feature inputs; batch None = a dynamic batch axis."""
    entries = []
    for name in names:
        kind = BY_NAME[name].kind
        low, high = schema["dense_range"][name] if kind == "dense" else (0, schema["vocab"][name])
        entries.append({"name": name, "dtype": "float32" if kind == "dense" else "int32",
                        "shape": [batch, schema["max_genres"]] if kind == "multi" else [batch],
                        "feature": BY_NAME[name].holds, "low": low, "high": high})
    return entries


def export_args(entries):
    """A placeholder tensor per input: shape-only where an axis is dynamic, zeros otherwise."""
    return tuple(Tensor(shape=e["shape"], dtype=getattr(ms, e["dtype"])) if None in e["shape"]
                 else Tensor(np.zeros(e["shape"], e["dtype"])) for e in entries)


def write_model(cell, inputs, outputs, config, path, file_format):
    """Export `cell` to `path` atomically, then its signature to `path`.json."""
    cell.set_train(False)
    args = export_args(inputs)
    if file_format == "ONNX":
        util.atomic_write(path, lambda tmp: mindspore.onnx.export(
            cell, *args, file_name=tmp, input_names=[e["name"] for e in inputs],
            output_names=[e["name"] for e in outputs]))
    else:
        # the temporary name already ends in the extension, so ms.export does not append another
        util.atomic_write(path, lambda tmp: ms.export(cell, *args, file_name=tmp, file_format=file_format))
    write_signature(path, inputs, outputs, config)


def write_signature(path, inputs, outputs, config):
    util.write_json(path + ".json", {"inputs": inputs, "outputs": outputs, "config": config,
                                     "mindspore_version": ms.__version__})
    util.log(f"wrote {path} and {path}.json")


def item_heads_of(item_tower, items, names):
    """Every item's heads [N, V, d], in the order of the item table."""
    slices = util.batch_slices(len(items["movie_id"]), ms_util.EVAL_BATCH_SIZE, drop_last=False)
    return np.concatenate([item_tower(*ms_util.to_tensors(items, names, start, stop)).asnumpy()
                           for start, stop in util.progress(slices, desc="item index", leave=False)])


def write_item_index(path, item_heads, items, bias):
    """Every item's heads with its encoded and raw ids and its title, row by row, and the scorer's
    bias (so the heads can be scored outside MindSpore: benchmarks/bench_prerank.py has a numpy
    scorer)."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, item_heads=item_heads, movie_id=items["movie_id"], raw_movie_id=items["raw_movie_id"],
                     title=items["title"], bias=bias)
    util.atomic_write(path, write)
    util.log(f"wrote {path} ({len(item_heads)} items)")


def write_serving_models(net, config, meta, name, onnx=False):
    """NAME_user_tower, NAME_item_tower and NAME_scorer .mindir with their sidecars: the towers with a
    dynamic batch, the scorer with a dynamic candidate count; written from an inference copy of
    `net` with its BatchNorms folded. With `onnx`, also NAME_user_tower.onnx (one user: a request)
    and NAME_scorer.onnx (serving.py builds it), for serving in onnxruntime. -> {part: path}."""
    schema, config_dict = meta["schema"], meta["config"]
    net = inference_copy(net, schema, config)
    user_names, item_names = user_input_names(config), item_input_names(config)
    user_tower, item_tower = MethodCell(net, "user_heads"), MethodCell(net, "item_heads")
    # head counts and size from one all-zero row (0, the unknown id, is a valid input)
    _, heads_per_user, head_dim = user_tower(*export_args(feature_inputs(user_names, schema, 1))).shape
    heads_per_item = item_tower(*export_args(feature_inputs(item_names, schema, 1))).shape[1]
    user_heads = {"name": "user_heads", "dtype": "float32", "shape": [None, heads_per_user, head_dim],
                  "feature": "the user's heads (IntTower: the FE heads of every user layer, stacked; "
                             "the other tower models: one, from the last layer)"}
    item_heads = {"name": "item_heads", "dtype": "float32", "shape": [None, heads_per_item, head_dim],
                  "feature": "the item's heads (IntTower: the FE heads of the last layer; "
                             "the other tower models: one, from the last layer)"}
    # the scorer's inputs are unbounded floats: low/high null
    scorer_inputs = [dict(user_heads, shape=[heads_per_user, head_dim], low=None, high=None,
                          feature="one user's heads: the user tower's output for that user"),
                     dict(item_heads, low=None, high=None,
                          feature="N candidates' heads: rows of the item index (item tower outputs)")]
    scorer_outputs = [dict(PROBABILITY, shape=[None])]
    files = {part: f"{name}_{part}.mindir" for part in ("user_tower", "item_tower", "scorer")}
    write_model(user_tower, feature_inputs(user_names, schema, None), [user_heads], config_dict,
                files["user_tower"], "MINDIR")
    write_model(item_tower, feature_inputs(item_names, schema, None), [item_heads], config_dict,
                files["item_tower"], "MINDIR")
    write_model(MethodCell(net, "score_candidates"), scorer_inputs, scorer_outputs, config_dict, files["scorer"],
                "MINDIR")
    if onnx:
        files["user_tower_onnx"], files["scorer_onnx"] = f"{name}_user_tower.onnx", f"{name}_scorer.onnx"
        write_model(user_tower, feature_inputs(user_names, schema, 1), [dict(user_heads, shape=[1, heads_per_user,
                                                                                                 head_dim])],
                    config_dict, files["user_tower_onnx"], "ONNX")
        graph = serving.scorer_onnx((heads_per_user, head_dim), (None, heads_per_item, head_dim), net.bias.asnumpy())

        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(graph)
        util.atomic_write(files["scorer_onnx"], write)
        write_signature(files["scorer_onnx"], scorer_inputs, scorer_outputs, config_dict)
    return files


# ---------------------------------------------------------------------------------------------
# Verification: every written file against the checkpoint's network, on real test rows

def numpy_fn(cell):
    return lambda *arrays: cell(*(Tensor(a) for a in arrays)).asnumpy()


def load_exported(path):
    """A function numpy arrays -> numpy array running the file as written."""
    if path.endswith(".onnx"):
        session = serving.onnx_session(path)
        names = [i.name for i in session.get_inputs()]
        return lambda *arrays: session.run(None, dict(zip(names, arrays)))[0]
    return numpy_fn(nn.GraphCell(ms.load(path)))


def repeated_rows(test, size):
    """`size` real test rows (repeated if the split is smaller), as a split dict."""
    take = np.arange(size) % len(test["label"])
    return {name: values[take] for name, values in test.items()}


def max_diff(run_a, run_b, batches):
    return max(float(np.abs(run_a(*batch) - run_b(*batch)).max()) for batch in batches)


def feature_batches(test, names, batch_size):
    """A fixed-batch file sees one full batch; a dynamic one a single row and a large batch."""
    sizes = [batch_size] if batch_size else [1, VERIFY_ROWS]
    return [tuple(repeated_rows(test, size)[name] for name in names) for size in sizes]


def serving_diff(user_tower_path, scorer_path, net, index, test, config):
    """scorer(user tower(user), item index rows of the user's test items) against the full model on
    the same (user, item) test rows, for up to VERIFY_USERS users. The full model scores all the
    rows at once, in the fixed-size batches of ms_util.predict: a new batch shape would cost a graph
    compile per user."""
    user_tower, scorer = load_exported(user_tower_path), load_exported(scorer_path)
    index_row = np.full(int(max(test["movie_id"].max(), index["movie_id"].max())) + 1, -1)
    index_row[index["movie_id"]] = np.arange(len(index["movie_id"]))
    users = np.unique(test["user_id"])[:VERIFY_USERS]
    rows = np.flatnonzero(np.isin(test["user_id"], users) & (index_row[test["movie_id"]] >= 0))
    expected = ms_util.predict(net, {name: test[name][rows] for name in input_names(config)}, input_names(config))
    served = np.empty_like(expected)
    for user in np.unique(test["user_id"][rows]):
        mine = np.flatnonzero(test["user_id"][rows] == user)
        heads = user_tower(*(test[name][rows[mine[:1]]] for name in user_input_names(config)))[0]
        served[mine] = scorer(heads, index["item_heads"][index_row[test["movie_id"][rows[mine]]]])
    return float(np.abs(served - expected).max())


def verify(files, net, config, test, items, batch_size):
    """{what was checked: max absolute difference}."""
    names = input_names(config)
    diffs = {os.path.basename(files["model"]): max_diff(
        load_exported(files["model"]), numpy_fn(net), feature_batches(test, names, batch_size))}
    if "scorer" in files:
        for part, cell, part_names in (("user_tower", MethodCell(net, "user_heads"), user_input_names(config)),
                                       ("item_tower", MethodCell(net, "item_heads"), item_input_names(config))):
            diffs[os.path.basename(files[part])] = max_diff(
                load_exported(files[part]), numpy_fn(cell), feature_batches(test, part_names, 0))
        with np.load(files["item_index"]) as z:
            index = {key: z[key] for key in z.files}
        item_tower = load_exported(files["item_tower"])
        diffs[os.path.basename(files["item_index"]) + " vs item tower"] = float(np.abs(
            index["item_heads"] - item_tower(*(items[name] for name in item_input_names(config)))).max())
        diffs["serving (user tower + item index + scorer) vs full model"] = serving_diff(
            files["user_tower"], files["scorer"], net, index, test, config)
    if "scorer_onnx" in files:
        diffs[os.path.basename(files["user_tower_onnx"])] = max_diff(
            load_exported(files["user_tower_onnx"]), numpy_fn(MethodCell(net, "user_heads")),
            feature_batches(test, user_input_names(config), 1))
        diffs["serving in onnxruntime (user tower + item index + scorer .onnx) vs full model"] = serving_diff(
            files["user_tower_onnx"], files["scorer_onnx"], net, index, test, config)
    return diffs


def main(argv=None):
    args = parse_args(argv)
    util.set_quiet(args.quiet)
    if args.batch_size < 0:
        raise util.UsageError(f"--batch-size must be >= 0 (0 = dynamic batch), got {args.batch_size}")
    if args.file_format == "AIR" and args.device_target != "Ascend":
        raise util.UsageError("--file-format AIR can only be written on Ascend (MindSpore builds AIR with the "
                              "Ascend toolkit); on this machine use --file-format MINDIR (for Ascend 310 / "
                              "MindSpore Lite) or ONNX")
    if args.file_format == "ONNX" and args.batch_size == 0:
        raise util.UsageError("--file-format ONNX needs a fixed --batch-size (MindSpore's ONNX export keeps the "
                              "export batch inside its Reshapes); use --batch-size N, or MINDIR for a dynamic batch")
    ms_util.setup(args.device_target)
    ckpt = args.ckpt or run_checkpoint(args.out_dir)
    net, config, meta = model_from_checkpoint(ckpt)
    if args.serving and config.model not in TOWER_MODELS:
        raise util.UsageError(f"--serving: {config.model} needs the user and the item together, so it cannot cache "
                              f"item vectors; export it without --serving (the tower models "
                              f"{', '.join(TOWER_MODELS)} can be served split)")
    data = get_dataset.load_matching_dataset(meta, config, args) if args.verify or args.serving else None

    extension = EXTENSIONS[args.file_format]
    name = args.file_name or os.path.splitext(ckpt)[0]
    name = name[:-len(extension)] if name.endswith(extension) else name
    files = {"model": name + extension}
    batch = args.batch_size or None
    write_model(inference_copy(net, meta["schema"], config), feature_inputs(input_names(config), meta["schema"], batch),
                [dict(PROBABILITY, shape=[batch])], meta["config"], files["model"], args.file_format)

    if args.serving:
        files.update(write_serving_models(net, config, meta, name, onnx=args.file_format == "ONNX"))
        files["item_index"] = f"{name}_item_index.npz"
        item_heads = item_heads_of(MethodCell(net, "item_heads"), data.items, item_input_names(config))
        write_item_index(files["item_index"], item_heads, data.items, net.bias.asnumpy())

    if not args.verify:
        return 0
    diffs = verify(files, net, config, data.test, data.items, args.batch_size)
    for what, diff in diffs.items():
        print(f"verify {what}: max_abs_diff={diff:.3g}")
    failed = [what for what, diff in diffs.items() if not diff <= TOLERANCE]
    if failed:
        util.log(f"verify failed: {', '.join(failed)} differ from the checkpoint by more than {TOLERANCE:g}")
        return 1
    return 0


if __name__ == "__main__":
    util.run_cli(main)
