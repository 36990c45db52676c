"""get_dataset.py: the protocols, splits, encoders and features, the cache and the command line.
Every test writes its own tiny MovieLens-shaped files under tmp_path (raw_files.py)."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import MinMaxScaler

import get_dataset
from raw_files import LATE_USERS, assert_same_arrays, load, make_raw, run_cli, write_ml1m


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


def test_paper_protocol_features_are_per_split_means_scaled_as_the_published_pipeline_scales_them(ml1m_root):
    """Each split's own label means, then the published code's scaler: fit on train, then valid,
    then test (each fit replacing the last), and every split transformed with that last fit."""
    ds = load(ml1m_root)
    means = {}
    for name in ("train", "valid", "test"):
        part = getattr(ds, name)
        frame = pd.DataFrame({k: part[k] for k in ("user_id", "movie_id", "label")})
        means[name] = np.column_stack([frame.groupby(key)["label"].transform("mean") for key in ("user_id", "movie_id")])
    scaler = MinMaxScaler()
    for name in ("train", "valid", "test"):
        scaler.fit(means[name])
    for name in ("train", "valid", "test"):
        expected = scaler.transform(means[name])
        part = getattr(ds, name)
        np.testing.assert_allclose(np.column_stack([part["user_mean_rating"], part["item_mean_rating"]]), expected,
                                   atol=1e-6)


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


def test_first_ratings_keeps_each_users_earliest_ratings_then_drops_threes(ml1m_root):
    ratings = make_raw()[0]
    earliest = ratings.sort_values("timestamp").groupby("user_id").head(5)
    expected = np.sort(earliest[earliest["rating"] != 3]["timestamp"].to_numpy())
    ds = load(ml1m_root, first_ratings=5)
    kept = np.sort(np.concatenate([getattr(ds, part)["timestamp"] for part in ("train", "valid", "test")]))
    np.testing.assert_array_equal(kept, expected)  # timestamps are unique: they identify the rows
    assert ds.schema["first_ratings"] == 5 and ds.schema["stats"]["rows"] < load(ml1m_root).schema["stats"]["rows"]


def test_a_cached_load_equals_a_fresh_build_and_a_changed_file_rebuilds(ml1m_root, monkeypatch):
    fresh = load(ml1m_root, use_cache=True)
    assert len(list((ml1m_root / "cache").glob("*.npz"))) == 1
    real_build = get_dataset.build_dataset
    monkeypatch.setattr(get_dataset, "build_dataset", lambda *a: pytest.fail("rebuilt despite the cache"))
    cached = load(ml1m_root, use_cache=True)
    for part in ("train", "valid", "test", "items"):
        assert_same_arrays(getattr(fresh, part), getattr(cached, part))
    assert cached.schema == fresh.schema
    monkeypatch.setattr(get_dataset, "build_dataset", real_build)
    with open(ml1m_root / "ml-1m" / "ratings.dat", "a") as f:
        f.write("3::7::5::999999999\n")
    assert load(ml1m_root, use_cache=True).schema["data_hash"] != fresh.schema["data_hash"]
    assert len(list((ml1m_root / "cache").glob("*.npz"))) == 2


def test_stats_prints_one_json_line_with_the_spec_keys_and_quiet_silences_the_rest(tmp_path):
    result = run_cli("--dataset", "synthetic", "--synthetic-scale", "0.01", "--data-root", str(tmp_path),
                     "--stats")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    stats = json.loads(result.stdout)
    assert list(stats) == ["dataset", "protocol", "rows", "users", "items", "positive_rate", "train", "valid", "test"]
    assert stats["rows"] == stats["train"] + stats["valid"] + stats["test"]
    assert stats["dataset"] == "synthetic" and stats["protocol"] == "paper" and 0 < stats["positive_rate"] < 1
    assert "leak" in result.stderr
    quiet = run_cli("--dataset", "synthetic", "--synthetic-scale", "0.01", "--data-root", str(tmp_path),
                    "--stats", "--quiet")
    assert quiet.stdout == result.stdout and quiet.stderr == ""


def test_missing_files_name_what_is_missing_and_both_ways_out(tmp_path):
    result = run_cli("--data-root", str(tmp_path), "--stats")
    assert result.returncode == 2
    for needle in ("ratings.dat", "users.dat", "movies.dat", "movielens.txt", "--download", "--dataset synthetic"):
        assert needle in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_temporal_split_with_the_paper_protocol_exits_2(ml1m_root):
    result = run_cli("--data-root", str(ml1m_root), "--split", "temporal", "--stats")
    assert result.returncode == 2 and "--protocol strict" in result.stderr


@pytest.mark.parametrize("protocol", ["paper", "strict"])
def test_the_user_table_holds_each_users_test_time_features_as_the_test_rows_do(ml1m_root, protocol):
    ds = load(ml1m_root, protocol=protocol)
    users = ds.users
    np.testing.assert_array_equal(users["user_id"], np.arange(1, ds.schema["vocab"]["user_id"]))
    rows = ds.test["user_id"] > 0
    at = ds.test["user_id"][rows] - 1
    for name in ("gender", "age", "occupation", "user_mean_rating"):
        np.testing.assert_array_equal(users[name][at], ds.test[name][rows], err_msg=name)
    raw = make_raw()[1].set_index("user_id")
    assert set(users["raw_user_id"]) <= set(raw.index)
