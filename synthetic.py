"""A synthetic MovieLens-1M: the shape, attribute domains and rating histogram of ML-1M, with
ratings driven by latent factors and attributes, generated deterministically from the seed and
written in the GroupLens ML-1M layout (read by readers.read_ml1m). For trying the pipeline and for
speed work, never for comparing models.
"""
import csv
import os
import shutil
import tempfile
import time

import numpy as np
import pandas as pd

import util
from readers import ML1M_AGES, ML1M_FILES

# ML-1M attribute domains and marginals (from the ML-1M README and files), for the synthetic set.
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


def make_synthetic(folder, seed, scale):
    """Generate the synthetic set into a temporary folder, then rename it into place."""
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(dir=parent, prefix=".tmp-")
    start = time.time()
    try:
        generate_synthetic(work, seed, scale)
        util.rename_folder_into_place(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    util.log(f"generated synthetic ML-1M (seed {seed}, scale {scale:g}) in {time.time() - start:.1f} s into {folder}")


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
