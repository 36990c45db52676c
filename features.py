"""The feature table: every input the models read, the tower it feeds, its kind and what it holds.

get_dataset.py encodes these columns, the models build their embeddings from them, export.py
writes them into every signature and the tests draw random inputs from them. The table's order is
the models' input order: the user tower's features, then the item tower's.

Kinds: "sparse" is an id, int32 [B] (1..vocab-1; 0 = unknown); "multi" several ids per row, int32
[B, slots], left-aligned with 0 as padding, mean-pooled; "dense" a float32 [B] in [0, 1].
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Feature:
    name: str
    tower: str  # "user" or "item"
    kind: str  # "sparse", "multi" or "dense"
    holds: str  # what the value is, for export signatures


FEATURES = (
    Feature("user_id", "user", "sparse", "encoded user id (0 = unknown user)"),
    Feature("gender", "user", "sparse", "encoded gender (0 = unknown)"),
    Feature("age", "user", "sparse", "encoded ML-1M age bucket (0 = unknown)"),
    Feature("occupation", "user", "sparse", "encoded occupation (0 = unknown)"),
    Feature("user_mean_rating", "user", "dense", "the user's share of positive ratings, scaled to [0, 1]"),
    Feature("movie_id", "item", "sparse", "encoded movie id (0 = unknown movie)"),
    Feature("genres", "item", "multi", "encoded genre ids of the movie, left-aligned, 0 = padding (mean-pooled)"),
    Feature("item_mean_rating", "item", "dense", "the movie's share of positive ratings, scaled to [0, 1]"),
)
BY_NAME = {feature.name: feature for feature in FEATURES}
# the id each tower's rows are keyed by (DAT's augmented vectors, the serving item index)
TOWER_ID = {"user": "user_id", "item": "movie_id"}


def tower_features(tower: str, config) -> tuple:
    """The features one tower reads, in input order (`--no-genres` drops the genres)."""
    return tuple(f for f in FEATURES if f.tower == tower and (config.use_genres or f.kind != "multi"))


def user_input_names(config) -> tuple:
    return tuple(f.name for f in tower_features("user", config))


def item_input_names(config) -> tuple:
    return tuple(f.name for f in tower_features("item", config))


def input_names(config) -> tuple:
    """Every model's inputs: all user features, then all item features."""
    return user_input_names(config) + item_input_names(config)
