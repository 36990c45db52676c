"""Print a user's top-K movies from a tower model's serving files: the user tower MindIR and the item
index of export.py --serving, the MaxSim score over the whole catalogue without the user's training
items.

python retrieve.py --user-id 42 [--k 10] [--out-dir output] [--ckpt PATH] [--file-name output/IntTower]
                   [--exact | --faiss] [--neighbours 400]
--user-id is the raw MovieLens user id. Without --ckpt it serves the best checkpoint of the run in
--out-dir; the serving files are NAME_user_tower.mindir (+ .json) and NAME_item_index.npz, NAME the
checkpoint's path without extension unless --file-name says otherwise (as for export.py). The user's
features and training items come from the checkpoint's own data (--data-root).

Two searches: exact (the MaxSim of every item, retrieval.exact_top_k) and faiss (retrieval.HeadIndex:
every item head in an inner-product index, --neighbours nearest heads per user head on average,
shared out by head norm, their items rescored with the exact MaxSim; a flat index below
retrieval.INDEX_MIN_VECTORS item heads, IVF above).
By default the catalogue's size decides: below INDEX_MIN_VECTORS item heads (every MovieLens
catalogue) the exact scan is as fast as an index search and loses nothing, above it faiss. --exact
and --faiss force one. The index is built in-process on every call: a server would build it once.
"""
import argparse
import json
import os

import mindspore as ms
import numpy as np
from mindspore import nn

import get_dataset
import ms_util
import retrieval
import util
from features import user_input_names
from networks import TOWER_MODELS, model_from_checkpoint, run_checkpoint
from serving import by_head

INDEX_KEYS = ("item_heads", "movie_id", "raw_movie_id", "title", "bias")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--user-id", type=int, required=True, help="raw MovieLens user id")
    parser.add_argument("--k", type=int, default=10, help="how many movies (default 10)")
    parser.add_argument("--ckpt", help="checkpoint (default: the best checkpoint of the run in --out-dir)")
    parser.add_argument("--out-dir", default="output", help="the run's folder (default output/)")
    parser.add_argument("--file-name", help="the serving files' NAME as export.py --serving wrote them (default: the "
                                            "checkpoint's path without extension, e.g. output/IntTower)")
    search = parser.add_mutually_exclusive_group()
    search.add_argument("--exact", action="store_true", help="score every item (default below "
                        f"{retrieval.INDEX_MIN_VECTORS:,} item heads)")
    search.add_argument("--faiss", action="store_true", help="search the faiss index (default from "
                        f"{retrieval.INDEX_MIN_VECTORS:,} item heads)")
    parser.add_argument("--neighbours", type=int, default=retrieval.NEIGHBOURS,
                        help=f"item heads a user head asks the faiss index for, on average over the user's heads "
                             f"(default {retrieval.NEIGHBOURS})")
    get_dataset.add_data_args(parser)  # the checkpoint's data: the user's features and training items
    return parser.parse_args(argv)


def re_export(ckpt):
    return f"export the serving files with `python export.py --ckpt {ckpt} --serving` (or point --file-name at them)"


def load_serving_files(name, ckpt, meta, bias):
    """(user tower path, item index dict), after checking that the files exist and were exported from
    this checkpoint: the user tower's sidecar holds its config, the item index its bias."""
    user_tower, item_index = f"{name}_user_tower.mindir", f"{name}_item_index.npz"
    for path in (user_tower, user_tower + ".json", item_index):
        if not os.path.isfile(path):
            raise util.UsageError(f"{path} not found: {re_export(ckpt)}")
    try:
        with open(user_tower + ".json") as f:
            signature = json.load(f)
        exported_config, head_dim = signature["config"], signature["outputs"][0]["shape"][2]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise util.UsageError(f"{user_tower}.json is not a signature written by export.py ({err}): "
                              f"{re_export(ckpt)}") from None
    if exported_config != meta["config"]:
        differ = sorted(key for key in exported_config.keys() | meta["config"].keys()
                        if exported_config.get(key) != meta["config"].get(key))
        raise util.UsageError(f"{user_tower}.json was exported from another model than {ckpt} (config differs in "
                              f"{', '.join(differ[:5])}): {re_export(ckpt)}")
    try:
        with np.load(item_index) as z:
            index = {key: z[key] for key in INDEX_KEYS}
    except (OSError, ValueError, KeyError) as err:
        raise util.UsageError(f"{item_index} is not an item index written by export.py --serving ({err}): "
                              f"{re_export(ckpt)}") from None
    heads = index["item_heads"]
    if heads.ndim != 3 or heads.shape[2] != head_dim or not np.array_equal(index["bias"], bias):
        raise util.UsageError(f"{item_index} was not exported from {ckpt} (its heads or bias differ from the "
                              f"checkpoint's): {re_export(ckpt)}")
    return user_tower, index


def main(argv=None):
    args = parse_args(argv)
    util.set_quiet(args.quiet)
    if args.k < 1:
        raise util.UsageError(f"--k must be at least 1, got {args.k}")
    if args.neighbours < 1:
        raise util.UsageError(f"--neighbours must be at least 1, got {args.neighbours}")
    ms_util.setup("CPU")
    ckpt = args.ckpt or run_checkpoint(args.out_dir)
    net, config, meta = model_from_checkpoint(ckpt)
    if config.model not in TOWER_MODELS:
        raise util.UsageError(f"{ckpt} is a {config.model} checkpoint: a ranking model needs the user and the item "
                              f"together, so it has no item index to retrieve from; retrieve with a tower model "
                              f"({', '.join(TOWER_MODELS)})")
    name = args.file_name or os.path.splitext(ckpt)[0]
    user_tower, index = load_serving_files(name, ckpt, meta, net.bias.asnumpy())

    data = get_dataset.load_matching_dataset(meta, config, args)
    items, users = data.items, data.users
    if not (np.array_equal(index["movie_id"], items["movie_id"])
            and np.array_equal(index["raw_movie_id"], items["raw_movie_id"])):
        raise util.UsageError(f"{name}_item_index.npz lists other movies than {ckpt}'s data: {re_export(ckpt)}")
    found = np.flatnonzero(users["raw_user_id"] == args.user_id)
    if len(found) == 0:
        raise util.UsageError(f"--user-id {args.user_id}: no such user among the {len(users['raw_user_id'])} users "
                              f"{ckpt} was trained on (raw ids between {users['raw_user_id'].min()} and "
                              f"{users['raw_user_id'].max()}); pass a raw MovieLens user id of its training data")
    user = found[0]
    # item index rows are encoded movie id - 1 (export.py writes the item table in order)
    trained = np.unique(data.train["movie_id"][data.train["user_id"] == users["user_id"][user]])
    excluded = trained[trained > 0] - 1
    catalogue = len(index["movie_id"])
    if args.k > catalogue - len(excluded):
        raise util.UsageError(f"--k {args.k} is larger than the {catalogue - len(excluded)} movies user "
                              f"{args.user_id} can be shown (a catalogue of {catalogue} without their "
                              f"{len(excluded)} training items)")

    tower = nn.GraphCell(ms.load(user_tower))
    user_heads = tower(*ms_util.to_tensors(users, user_input_names(config), user, user + 1)).asnumpy()
    item_head_count = index["item_heads"].shape[0] * index["item_heads"].shape[1]
    if args.exact or (not args.faiss and item_head_count < retrieval.INDEX_MIN_VECTORS):
        rows, logits = retrieval.exact_top_k(user_heads, by_head(index["item_heads"]), args.k, [excluded])
        how = "exact MaxSim over every movie"
    else:
        head_index = retrieval.HeadIndex(index["item_heads"])
        rows, logits = head_index.top_k(user_heads, args.k, args.neighbours, [excluded])
        how = (f"faiss {head_index.kind} index, {args.neighbours} neighbours per user head on average "
               f"({user_heads.shape[1]} heads, shared out by norm), rescored with the exact MaxSim")
    rows, scores = rows[0][rows[0] >= 0], retrieval.probability(logits[0], index["bias"][0])
    print(f"user {args.user_id}: top {args.k} of {catalogue - len(excluded)} movies ({len(excluded)} training items "
          f"left out); {config.model} {ckpt}; {how}")
    print("| rank | score | movie id | title |")
    print("| ---: | ---: | ---: | --- |")
    for rank, row in enumerate(rows, 1):
        print(f"| {rank} | {scores[rank - 1]:.4f} | {index['raw_movie_id'][row]} | {index['title'][row]} |")
    if len(rows) < args.k:
        print(f"(only {len(rows)} movies reached: raise --neighbours or use --exact)")
    return 0


if __name__ == "__main__":
    util.run_cli(main)
