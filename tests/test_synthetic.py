"""synthetic.py: a deterministic MovieLens-1M look-alike with ML-1M's domains, read like ML-1M."""
import numpy as np

import readers
import synthetic
from raw_files import load

SPLIT_KEYS = {"user_id", "gender", "age", "occupation", "user_mean_rating", "movie_id", "genres",
              "item_mean_rating", "label", "timestamp"}


def test_synthetic_has_the_same_schema_and_dtypes_as_movielens(ml1m_root, tmp_path):
    real = load(ml1m_root)
    synthetic = load(tmp_path / "synthetic-root", dataset="synthetic", synthetic_scale=0.01)
    assert synthetic.schema.keys() == real.schema.keys()
    assert set(synthetic.train) == SPLIT_KEYS
    for part in ("train", "valid", "test", "items"):
        for key, array in getattr(real, part).items():
            other = getattr(synthetic, part)[key]
            same_type = other.dtype.kind == array.dtype.kind == "U" or other.dtype == array.dtype  # titles: str
            assert same_type and other.ndim == array.ndim, key
            assert other.flags["C_CONTIGUOUS"]


def test_synthetic_generation_is_deterministic_and_has_ml1m_domains(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        (tmp_path / name).mkdir()
        synthetic.generate_synthetic(str(tmp_path / name), seed=seed, scale=0.02)
    for f in readers.ML1M_FILES:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    ratings, users, movies = readers.read_ml1m(str(tmp_path / "a"))
    assert len(users) == round(6040 * 0.02) and len(movies) == round(3883 * 0.02)
    assert ratings.groupby("user_id").size().min() >= 20
    assert not ratings.duplicated(["user_id", "movie_id"]).any()
    assert set(users["gender"]) == {"F", "M"}
    assert set(users["age"]) <= set(readers.ML1M_AGES) and users["occupation"].between(0, 20).all()
    genres = movies["genres"].str.split("|")
    assert genres.map(len).between(1, 6).all()
    assert set(genres.explode()) <= set(synthetic.ML1M_GENRE_COUNTS)
    assert movies["title"].str.match(r".+ \(\d{4}\)$").all()
    shares = np.bincount(ratings["rating"], minlength=6)[1:] / len(ratings)
    np.testing.assert_allclose(shares, synthetic.ML1M_STAR_SHARES, atol=0.002)
    assert (tmp_path / "c" / "ratings.dat").read_bytes() != (tmp_path / "a" / "ratings.dat").read_bytes()


def test_synthetic_files_are_generated_once_per_seed_and_scale(tmp_path):
    load(tmp_path, dataset="synthetic", synthetic_scale=0.01)
    folder = tmp_path / "synthetic" / "seed3047-scale0.01"
    stamp = (folder / "ratings.dat").stat().st_mtime_ns
    load(tmp_path, dataset="synthetic", synthetic_scale=0.01)
    assert (folder / "ratings.dat").stat().st_mtime_ns == stamp
    load(tmp_path, dataset="synthetic", synthetic_scale=0.01, seed=1)
    assert sorted(p.name for p in (tmp_path / "synthetic").iterdir()) == ["seed1-scale0.01", "seed3047-scale0.01"]


def test_a_run_that_generates_the_same_set_as_another_keeps_the_others(tmp_path, monkeypatch):
    # two runs (run_results --jobs 2) both found no synthetic set; the other one puts its folder in
    # place while this one generates: this one keeps theirs (which they may be reading) and leaves no
    # temporary folder behind
    folder = tmp_path / "synthetic" / "seed5-scale0.01"
    generate = synthetic.generate_synthetic

    def generate_while_the_other_run_finishes(work, seed, scale):
        generate(work, seed, scale)
        generate(str(tmp_path / "other"), seed, scale)
        (tmp_path / "other" / "the other run's").write_text("")
        (tmp_path / "other").rename(folder)

    (tmp_path / "other").mkdir()
    monkeypatch.setattr(synthetic, "generate_synthetic", generate_while_the_other_run_finishes)
    synthetic.make_synthetic(str(folder), seed=5, scale=0.01)
    assert (folder / "the other run's").exists()
    assert all((folder / f).is_file() for f in readers.ML1M_FILES)
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]
