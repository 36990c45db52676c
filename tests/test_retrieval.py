"""Retrieval over the whole catalogue (retrieval.py, retrieve.py): the exact top K is the brute-force
ranking, the faiss union + rerank is the exact top K once the neighbours cover the catalogue, the
metrics match hand-computed cases, retrieve.py prints the full model's top K of a tiny trained
model, and every bad input exits 2 with one message."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

import get_dataset
import ms_util
import retrieval
from features import input_names
from networks import build_network, model_from_checkpoint
from serving import by_head, maxsim_logits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = ["--mlp-layers", "16", "8", "--feblock-size", "16", "--sparse-embedding-dim", "8"]
SERVING_FILES = ("_user_tower.mindir", "_user_tower.mindir.json", "_item_index.npz")


def random_heads(users, items, user_heads=3, item_heads=2, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((users, user_heads, dim)).astype(np.float32),
            rng.standard_normal((items, item_heads, dim)).astype(np.float32))


def brute_force_ranking(user_heads, item_heads, exclude):
    """Every item's MaxSim logit, one (user, item) pair at a time, excluded items at -inf; the
    ranking best first (ties: lower row first)."""
    logits = np.array([[sum(max(float(u @ v) for v in item) for u in user) for item in item_heads]
                       for user in user_heads])
    for user, rows in enumerate(exclude):
        logits[user, rows] = -np.inf
    return np.argsort(-logits, axis=1, kind="stable"), logits


def test_exact_top_k_is_the_brute_force_ranking(monkeypatch):
    # blocks of 7 items and 2 users, so that the running top K crosses block boundaries
    monkeypatch.setattr(retrieval, "ITEM_BLOCK", 7)
    monkeypatch.setattr(retrieval, "BLOCK_FLOATS", 3 * 2 * 7 * 2)
    user_heads, item_heads = random_heads(users=5, items=40)
    exclude = [np.array([], int), np.array([0, 1, 2]), np.arange(0, 40, 3), np.array([39]), np.arange(5, 40)]
    ranking, logits = brute_force_ranking(user_heads, item_heads, exclude)
    rows, top_logits = retrieval.exact_top_k(user_heads, by_head(item_heads), 10, exclude)
    np.testing.assert_array_equal(rows[:4], ranking[:4, :10])
    np.testing.assert_allclose(top_logits[:4], np.take_along_axis(logits[:4], ranking[:4, :10], 1), rtol=1e-5)
    # the last user has 5 items left: the rest of the top 10 is empty (row -1, logit -inf)
    np.testing.assert_array_equal(rows[4], np.concatenate([ranking[4, :5], [-1] * 5]))
    assert np.isneginf(top_logits[4, 5:]).all()


def test_exact_top_k_without_exclusions_orders_every_item():
    user_heads, item_heads = random_heads(users=3, items=12)
    rows, _ = retrieval.exact_top_k(user_heads, by_head(item_heads), 12)
    np.testing.assert_array_equal(rows, brute_force_ranking(user_heads, item_heads, [[]] * 3)[0])


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivf_sq8", "hnsw"])
def test_faiss_union_and_rerank_is_exact_when_neighbours_cover_the_catalogue(kind):
    user_heads, item_heads = random_heads(users=6, items=300)
    exclude = [np.arange(user, 300, 7) for user in range(6)]
    # IVF: each of the 4 lists probed; HNSW: a candidate list as long as the 600 item heads
    index = retrieval.HeadIndex(item_heads, kind, lists=4, probes=600 if kind == "hnsw" else 4)
    rows, logits = index.top_k(user_heads, 20, neighbours=300 * 2, exclude=exclude)
    exact_rows, exact_logits = retrieval.exact_top_k(user_heads, by_head(item_heads), 20, exclude)
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(logits, exact_logits, rtol=1e-5)


def test_the_head_index_keeps_no_copy_of_the_catalogue_heads_beside_faiss():
    _, item_heads = random_heads(users=1, items=50)
    index = retrieval.HeadIndex(item_heads, "flat")
    held = [value for value in vars(index).values() if isinstance(value, np.ndarray)]
    assert all(np.shares_memory(value, item_heads) for value in held)


def test_each_user_head_reaches_the_item_owning_its_nearest_head():
    # item i's head h points along axis 2i + h: a user head along axis 2 * 7 + 1 is nearest to item 7
    item_heads = np.eye(20, dtype=np.float32).reshape(10, 2, 20)
    user_heads = np.zeros((1, 3, 20), np.float32)
    user_heads[0, 0, 15], user_heads[0, 1, 4] = 1.0, 1.0
    # the third head is all zero: it scores every item 0, reaches none
    candidates = retrieval.HeadIndex(item_heads, "flat").candidates(user_heads, neighbours=1)
    np.testing.assert_array_equal(candidates[0], [2, 7])


def test_the_search_budget_is_shared_out_in_proportion_to_the_weights():
    assert list(retrieval.share_out(10, np.array([3.0, 1.0, 1.0]))) == [6, 2, 2]
    # 3.5, 2.1, 1.4: the one left over goes to the largest remainder
    assert list(retrieval.share_out(7, np.array([0.5, 0.3, 0.2]))) == [4, 2, 1]
    assert retrieval.share_out(11, np.array([0.2, 0.7, 0.1, 0.4])).sum() == 11


def test_a_long_user_head_asks_for_more_neighbours_than_a_short_one():
    # items 0-3 lie along axis 0 (lengths 4, 3, 2, 1), items 4-7 along axis 1; one head per item
    item_heads = np.zeros((8, 1, 4), np.float32)
    item_heads[:4, 0, 0] = item_heads[4:, 0, 1] = [4, 3, 2, 1]
    user_heads = np.zeros((1, 2, 4), np.float32)
    user_heads[0, 0, 0], user_heads[0, 1, 1] = 3.0, 1.0
    # 2 neighbours per head on average: 3 for the head 3 times as long, 1 for the other
    candidates = retrieval.HeadIndex(item_heads, "flat").candidates(user_heads, neighbours=2)
    np.testing.assert_array_equal(candidates[0], [0, 1, 2, 4])


def test_few_neighbours_give_an_approximate_top_k_of_real_candidates():
    user_heads, item_heads = random_heads(users=4, items=200)
    rows, logits = retrieval.HeadIndex(item_heads, "flat").top_k(user_heads, 10, neighbours=2)
    # each user reaches at most 3 heads x 2 neighbours = 6 items: the other places stay empty
    assert (rows[:, 6:] == -1).all() and np.isneginf(logits[:, 6:]).all()
    found = rows >= 0
    exact = maxsim_logits(user_heads, by_head(item_heads))
    np.testing.assert_allclose(logits[found], np.take_along_axis(exact, np.where(found, rows, 0), 1)[found],
                               rtol=1e-5)


def test_recall_and_ndcg_by_hand():
    ranked = np.array([[3, 1, 4, 5, 9],
                       [7, 8, -1, -1, -1]])
    relevant = [np.array([1, 5, 6]), np.array([7])]
    np.testing.assert_allclose(retrieval.recall_at_k(ranked, relevant, 2), [1 / 3, 1.0])
    np.testing.assert_allclose(retrieval.recall_at_k(ranked, relevant, 5), [2 / 3, 1.0])
    # user 0: hits at ranks 2 and 4 of 5; the ideal ranking puts its 3 relevant items at ranks 1-3
    ideal = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    np.testing.assert_allclose(retrieval.ndcg_at_k(ranked, relevant, 5),
                               [(1 / np.log2(3) + 1 / np.log2(5)) / ideal, 1.0])
    # at k = 1 user 0 has no hit, and the ideal is one relevant item at rank 1
    np.testing.assert_allclose(retrieval.ndcg_at_k(ranked, relevant, 1), [0.0, 1.0])
    # rank 2 alone, 2 relevant: (1 / log2 3) / (1 + 1 / log2 3)
    np.testing.assert_allclose(retrieval.ndcg_at_k(np.array([[0, 5]]), [np.array([5, 6])], 2),
                               [(1 / np.log2(3)) / (1 + 1 / np.log2(3))])


# ---------------------------------------------------------------------------------------------
# retrieve.py end to end on a tiny trained model

def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(checkpoint, data root, serving NAME) of a tiny IntTower trained one epoch on tiny synthetic
    data and exported with --serving."""
    root = tmp_path_factory.mktemp("retrieve")
    data_root, out_dir = str(root / "data"), str(root / "run")
    result = run("train.py", "--dataset", "synthetic", "--synthetic-scale", "0.01", "--epochs", "1", *TINY_MODEL,
                 "--out-dir", out_dir, "--data-root", data_root, "--quiet")
    assert result.returncode == 0, result.stderr
    ckpt = os.path.join(out_dir, "IntTower.ckpt")
    result = run("export.py", "--ckpt", ckpt, "--data-root", data_root, "--serving", "--quiet")
    assert result.returncode == 0, result.stderr
    return ckpt, data_root, os.path.join(out_dir, "IntTower")


@pytest.fixture(scope="module")
def full_model_ranking(served):
    """user raw id -> (movie raw ids best first, their probabilities) by the checkpoint's full network
    over every (user, movie) pair, the user's training movies left out; for the first three users."""
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    net, config, _ = model_from_checkpoint(served[0])
    data = get_dataset.load_dataset(config, served[1])
    rankings = {}
    for user in (0, 1, 2):
        pairs = {name: np.repeat(data.users[name][user:user + 1], len(data.items["movie_id"]), axis=0)
                 for name in data.users}
        pairs.update(data.items)
        probabilities = net(*(Tensor(pairs[name]) for name in input_names(config))).asnumpy()
        trained = data.train["movie_id"][data.train["user_id"] == data.users["user_id"][user]]
        probabilities[np.isin(data.items["movie_id"], trained)] = -1.0
        order = np.argsort(-probabilities, kind="stable")
        rankings[int(data.users["raw_user_id"][user])] = (data.items["raw_movie_id"][order], probabilities[order])
    ms.set_context(mode=previous)
    return rankings


def printed_ranking(stdout):
    """(movie ids, scores) from retrieve.py's table."""
    rows = [line.strip("|").split("|") for line in stdout.splitlines() if line.startswith("| ") and
            line[2].isdigit()]
    return np.array([int(row[2]) for row in rows]), np.array([float(row[1]) for row in rows])


# a catalogue this small (38 movies) is scanned exactly unless --faiss is given; one user each
@pytest.mark.parametrize("flags, search, user", [([], "exact MaxSim", 1), (["--exact"], "exact MaxSim", 2),
                                                 (["--faiss"], "faiss flat index", 3)])
def test_retrieve_prints_the_full_models_top_k(flags, search, user, served, full_model_ranking):
    ckpt, data_root, _ = served
    movies, probabilities = full_model_ranking[user]
    result = run("retrieve.py", "--ckpt", ckpt, "--data-root", data_root, "--user-id", user, "--k", 10, "--quiet",
                 *flags)
    assert result.returncode == 0, result.stderr
    printed_movies, printed_scores = printed_ranking(result.stdout)
    np.testing.assert_array_equal(printed_movies, movies[:10])
    np.testing.assert_allclose(printed_scores, probabilities[:10], atol=1e-4)
    assert search in result.stdout.splitlines()[0]


def copy_serving_files(name, folder):
    """The serving files of NAME copied under `folder` -> their new NAME."""
    os.makedirs(folder)
    for suffix in SERVING_FILES:
        shutil.copy(name + suffix, os.path.join(folder, "IntTower" + suffix))
    return os.path.join(folder, "IntTower")


def rewrite_sidecar_config(name, change):
    path = name + "_user_tower.mindir.json"
    with open(path) as f:
        signature = json.load(f)
    change(signature["config"])
    with open(path, "w") as f:
        json.dump(signature, f)


def save_other_checkpoint(ckpt, path, model=None):
    """Another checkpoint of the same data: the same network with its bias moved (a different
    training), or a freshly built `model` of the same config (a ranking model: dcn)."""
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    net, config, meta = model_from_checkpoint(ckpt)
    if model:
        config = dataclasses.replace(config, model=model)
        net = build_network(meta["schema"], config)
    else:
        net.bias.set_data(Tensor(net.bias.asnumpy() + 0.5))
    ms_util.save_checkpoint(path, (net,), dict(meta, config=dataclasses.asdict(config)))
    ms.set_context(mode=previous)
    return path


# case -> what the message must name (the flag or file at fault)
BAD_INPUTS = {"unknown user id": "--user-id 999999", "k zero": "--k", "k negative": "--k",
              "k larger than the catalogue": "--k 39", "ranking model": "dcn",
              "missing item index": "_item_index.npz", "no serving files": "_user_tower.mindir",
              "sidecar of another config": "_user_tower.mindir.json", "index of another checkpoint": "_item_index.npz"}


def bad_input_flags(case, ckpt, name, tmp):
    """The flags that make `case` (after --ckpt CKPT --user-id 1: later flags win), its files made under tmp."""
    if case == "unknown user id":
        return ["--user-id", 999999]
    if case in ("k zero", "k negative", "k larger than the catalogue"):
        return ["--k", {"k zero": 0, "k negative": -3}.get(case, 39)]  # the catalogue has 38 movies
    if case == "ranking model":
        return ["--ckpt", save_other_checkpoint(ckpt, str(tmp / "DCN.ckpt"), model="dcn")]
    if case == "no serving files":
        return ["--file-name", str(tmp / "absent")]
    if case == "index of another checkpoint":
        return ["--ckpt", save_other_checkpoint(ckpt, str(tmp / "other.ckpt")), "--file-name", name]
    copied = copy_serving_files(name, str(tmp / "served"))
    if case == "missing item index":
        os.remove(copied + "_item_index.npz")
    else:  # sidecar of another config
        rewrite_sidecar_config(copied, lambda config: config.update(head_num=2))
    return ["--file-name", copied]


@pytest.fixture(scope="module")
def bad_runs(served, tmp_path_factory):
    """case -> (finished retrieve.py run, folder it may not write into, files there before the run);
    the runs go in parallel."""
    ckpt, data_root, name = served
    started = {}
    for case in BAD_INPUTS:
        tmp = tmp_path_factory.mktemp(case.replace(" ", "_"))
        args = ["--ckpt", ckpt, "--data-root", data_root, "--user-id", 1, "--quiet"] + bad_input_flags(case, ckpt,
                                                                                                      name, tmp)
        before = sorted(os.listdir(tmp))
        process = subprocess.Popen([sys.executable, os.path.join(REPO, "retrieve.py"), *map(str, args)], cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started[case] = (process, tmp, before)
    return {case: (process.communicate(timeout=300), process.returncode, tmp, before)
            for case, (process, tmp, before) in started.items()}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_message(case, bad_runs):
    (stdout, stderr), returncode, tmp, before = bad_runs[case]
    assert returncode == 2, stderr
    assert "Traceback" not in stderr and stdout == ""
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and BAD_INPUTS[case] in message, message
    assert sorted(os.listdir(tmp)) == before  # nothing written
