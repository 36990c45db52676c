"""export.py end to end on a tiny checkpoint trained once for the module: round trips with parity
(MindIR, ONNX), sidecars that are enough to call each file, the serving identity, the item index,
bad input exit codes and repeatable exports."""
import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import onnxruntime
import pytest
from mindspore import Tensor, nn

import get_dataset
import ms_util
import serving
from features import input_names, item_input_names, user_input_names
from networks import model_from_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = ["--mlp-layers", "16", "8", "--feblock-size", "16", "--sparse-embedding-dim", "8"]
SERVING_PARTS = ("user_tower", "item_tower", "scorer")


def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint path, data root) of a tiny model trained one epoch on tiny synthetic data."""
    root = tmp_path_factory.mktemp("export")
    data_root, out_dir = str(root / "data"), str(root / "ckpt")
    result = run("train.py", "--dataset", "synthetic", "--synthetic-scale", "0.01", "--epochs", "1", *TINY_MODEL,
                 "--out-dir", out_dir, "--data-root", data_root, "--quiet")
    assert result.returncode == 0, result.stderr
    return os.path.join(out_dir, "IntTower.ckpt"), data_root


def export(trained, name, *flags):
    ckpt, data_root = trained
    return run("export.py", "--ckpt", ckpt, "--data-root", data_root, "--file-name", name, "--quiet", *flags)


@pytest.fixture(scope="module")
def mindir(trained, tmp_path_factory):
    """NAME of a default (fixed batch) MindIR export with --serving --verify, and its run."""
    name = str(tmp_path_factory.mktemp("mindir") / "IntTower")
    return name, export(trained, name, "--serving", "--verify")


@pytest.fixture(scope="module")
def onnx_export(trained, tmp_path_factory):
    """NAME of an ONNX export with --serving --verify, and its run."""
    name = str(tmp_path_factory.mktemp("onnx") / "IntTower")
    return name, export(trained, name, "--file-format", "ONNX", "--batch-size", "64", "--serving", "--verify")


@pytest.fixture(scope="module")
def onnx_name(onnx_export):
    assert onnx_export[1].returncode == 0, onnx_export[1].stderr
    return onnx_export[0]


@pytest.fixture(scope="module")
def checkpoint(trained):
    """The checkpoint's network (inference mode, graph mode as export.py runs it), config, meta and
    dataset, in this process."""
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    net, config, meta = model_from_checkpoint(trained[0])
    yield net, config, meta, get_dataset.load_dataset(config, trained[1])
    ms.set_context(mode=previous)


def graph_fn(path):
    graph = nn.GraphCell(ms.load(path))
    return lambda *arrays: graph(*(Tensor(a) for a in arrays)).asnumpy()


def onnx_fn(path):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda *arrays: session.run(None, dict(zip(names, arrays)))[0]


def real_rows(split, names, size):
    """`size` real test rows (repeated when the split is smaller) of the named features."""
    take = np.arange(size) % len(split["label"])
    return tuple(split[name][take] for name in names)


def expected(net, arrays):
    return net(*(Tensor(a) for a in arrays)).asnumpy()


@pytest.mark.parametrize("fixture, checks", [("mindir", 5), ("onnx_export", 7)])
def test_verify_passes_and_reports_every_file(request, fixture, checks):
    name, result = request.getfixturevalue(fixture)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == checks and all(line.startswith("verify ") and "max_abs_diff=" in line for line in lines)
    assert all(float(line.rsplit("=", 1)[1]) <= 1e-5 for line in lines)
    extension = ".mindir" if fixture == "mindir" else ".onnx"
    served = [f"{name}_{part}.mindir" for part in SERVING_PARTS]
    if fixture == "onnx_export":
        served += [f"{name}_user_tower.onnx", f"{name}_scorer.onnx"]
    for path in [name + extension] + served:
        assert os.path.isfile(path) and os.path.isfile(path + ".json")
    assert os.path.isfile(name + "_item_index.npz")
    assert not [f for f in os.listdir(os.path.dirname(name)) if f.startswith(".tmp")]


def test_mindir_round_trip_parity(mindir, checkpoint):
    net, config, meta, data = checkpoint
    arrays = real_rows(data.test, input_names(config), 2048)  # the default fixed batch
    out = graph_fn(mindir[0] + ".mindir")(*arrays)
    assert out.shape == (2048,)
    np.testing.assert_allclose(out, expected(net, arrays), rtol=0, atol=1e-5)


def test_onnx_round_trip_parity(onnx_name, checkpoint):
    net, config, meta, data = checkpoint
    arrays = real_rows(data.test, input_names(config), 64)
    np.testing.assert_allclose(onnx_fn(onnx_name + ".onnx")(*arrays), expected(net, arrays), rtol=0, atol=1e-5)


def test_dynamic_batch_mindir(trained, tmp_path, checkpoint):
    net, config, meta, data = checkpoint
    name = str(tmp_path / "dynamic")
    assert export(trained, name, "--batch-size", "0").returncode == 0
    signature = json.load(open(name + ".mindir.json"))
    assert all(entry["shape"][0] is None for entry in signature["inputs"] + signature["outputs"])
    run_file = graph_fn(name + ".mindir")
    for size in (1, 7, 300):
        arrays = real_rows(data.test, input_names(config), size)
        out = run_file(*arrays)
        assert out.shape == (size,)
        np.testing.assert_allclose(out, expected(net, arrays), rtol=0, atol=1e-5)


def sidecar_inputs(signature, rng, n=5):
    """Random inputs built from a signature alone: dtype, shape (n for a dynamic axis), [low, high)."""
    arrays = []
    for entry in signature["inputs"]:
        shape = [n if size is None else size for size in entry["shape"]]
        if entry["low"] is None:
            arrays.append(rng.standard_normal(shape).astype(entry["dtype"]))
        elif np.issubdtype(np.dtype(entry["dtype"]), np.integer):
            arrays.append(rng.integers(entry["low"], entry["high"], shape).astype(entry["dtype"]))
        else:
            arrays.append(rng.uniform(entry["low"], entry["high"], shape).astype(entry["dtype"]))
    return arrays


def test_sidecars_are_enough_to_call_every_file(mindir, onnx_name, checkpoint):
    net, config, meta, data = checkpoint
    rng = np.random.default_rng(0)
    files = ([(mindir[0] + ".mindir", graph_fn), (onnx_name + ".onnx", onnx_fn)]
             + [(f"{mindir[0]}_{part}.mindir", graph_fn) for part in SERVING_PARTS])
    for path, load in files:
        signature = json.load(open(path + ".json"))
        assert set(signature) == {"inputs", "outputs", "config", "mindspore_version"}
        assert signature["config"] == meta["config"] and signature["mindspore_version"] == ms.__version__
        out = load(path)(*sidecar_inputs(signature, rng))
        (output,) = signature["outputs"]
        assert out.dtype == np.dtype(output["dtype"]) and np.isfinite(out).all()
        assert list(out.shape) == [5 if size is None else size for size in output["shape"]]


def test_sidecar_describes_the_real_inputs(mindir, checkpoint):
    net, config, meta, data = checkpoint
    for path, names in ((mindir[0] + ".mindir", input_names(config)),
                        (mindir[0] + "_user_tower.mindir", user_input_names(config)),
                        (mindir[0] + "_item_tower.mindir", item_input_names(config))):
        inputs = json.load(open(path + ".json"))["inputs"]
        assert [entry["name"] for entry in inputs] == list(names)
        for entry in inputs:
            real = data.test[entry["name"]]
            assert real.dtype == np.dtype(entry["dtype"]) and list(real.shape[1:]) == entry["shape"][1:]
            assert entry["feature"] and entry["low"] <= real.min()
            # ids: high is exclusive (the vocabulary size); dense values: the inclusive range
            assert real.max() < entry["high"] if real.dtype == np.int32 else real.max() <= entry["high"]
    assert json.load(open(mindir[0] + ".mindir.json"))["inputs"][0]["shape"] == [2048]


@pytest.mark.parametrize("engine", ["mindir", "onnxruntime"])
def test_serving_identity(mindir, onnx_name, checkpoint, engine):
    """scorer(user tower(user), item index rows) == the full model on real (user, item) test pairs,
    in MindSpore (the MindIR files) and in onnxruntime (the ONNX user tower and scorer)."""
    net, config, meta, data = checkpoint
    name, test = (mindir[0], data.test) if engine == "mindir" else (onnx_name, data.test)
    load = graph_fn if engine == "mindir" else onnx_fn
    extension = ".mindir" if engine == "mindir" else ".onnx"
    user_tower, scorer = load(name + "_user_tower" + extension), load(name + "_scorer" + extension)
    with np.load(name + "_item_index.npz") as index:
        item_heads, movie_ids = index["item_heads"], index["movie_id"]
    row_of_movie = {int(movie): row for row, movie in enumerate(movie_ids)}
    users = np.unique(test["user_id"])[:10]
    for user in users:
        rows = np.flatnonzero(test["user_id"] == user)
        heads = user_tower(*(test[feature][rows[:1]] for feature in user_input_names(config)))[0]
        served = scorer(heads, item_heads[[row_of_movie[int(m)] for m in test["movie_id"][rows]]])
        full = expected(net, tuple(test[feature][rows] for feature in input_names(config)))
        np.testing.assert_allclose(served, full, rtol=0, atol=1e-5)


def test_the_onnx_serving_session_sleeps_between_requests_and_scores_the_same(onnx_name):
    """serving.onnx_session turns off the spinning of onnxruntime's worker threads (on a 2-vCPU
    machine a spinning worker competes with the request's own thread) and changes no score."""
    path = onnx_name + "_scorer.onnx"
    session = serving.onnx_session(path)
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    rng = np.random.default_rng(0)
    user_shape, item_shape = (session.get_inputs()[i].shape for i in (0, 1))
    inputs = {"user_heads": rng.standard_normal(user_shape).astype(np.float32),
              "item_heads": rng.standard_normal([1000] + item_shape[1:]).astype(np.float32)}
    np.testing.assert_array_equal(session.run(None, inputs)[0], onnx_fn(path)(*inputs.values()))


def test_item_index_is_the_item_tower_output(mindir, checkpoint):
    net, config, meta, data = checkpoint
    with np.load(mindir[0] + "_item_index.npz") as index:
        np.testing.assert_array_equal(index["movie_id"], data.items["movie_id"])
        np.testing.assert_array_equal(index["raw_movie_id"], data.items["raw_movie_id"])
        np.testing.assert_array_equal(index["title"], data.items["title"])
        np.testing.assert_array_equal(index["bias"], net.bias.asnumpy())
        item_features = tuple(data.items[name] for name in item_input_names(config))
        tower_heads = graph_fn(mindir[0] + "_item_tower.mindir")(*item_features)
        np.testing.assert_allclose(index["item_heads"], tower_heads, rtol=0, atol=1e-6)
        in_process = net.item_heads(*(Tensor(a) for a in item_features)).asnumpy()
        np.testing.assert_allclose(tower_heads, in_process, rtol=0, atol=1e-6)


def test_exporting_twice_gives_the_same_outputs(mindir, trained, tmp_path, checkpoint):
    net, config, meta, data = checkpoint
    again = str(tmp_path / "again")
    assert export(trained, again, "--serving").returncode == 0
    arrays = real_rows(data.test, input_names(config), 2048)
    np.testing.assert_array_equal(graph_fn(mindir[0] + ".mindir")(*arrays), graph_fn(again + ".mindir")(*arrays))
    with np.load(mindir[0] + "_item_index.npz") as first, np.load(again + "_item_index.npz") as second:
        for key in first.files:
            np.testing.assert_array_equal(first[key], second[key])
    for suffix in (".mindir.json", "_user_tower.mindir.json", "_scorer.mindir.json"):
        assert json.load(open(mindir[0] + suffix)) == json.load(open(again + suffix))


def altered_checkpoint(trained, path, change):
    params, meta = ms_util.load_checkpoint(trained[0])
    net, _, _ = model_from_checkpoint(trained[0])
    change(meta["schema"])
    ms_util.save_checkpoint(path, (net,), meta)
    return path


@pytest.mark.parametrize("case", ["missing", "not a checkpoint", "other vocabulary", "other data", "AIR on CPU",
                                  "ONNX dynamic batch"])
def test_bad_input_exits_2(case, trained, tmp_path):
    ckpt, name = trained[0], str(tmp_path / "bad")
    flags = ["--verify"]
    if case == "missing":
        ckpt = str(tmp_path / "absent.ckpt")
    elif case == "not a checkpoint":
        ckpt = str(tmp_path / "junk.ckpt")
        open(ckpt, "w").write("not a checkpoint")
    elif case == "other vocabulary":
        ckpt = altered_checkpoint(trained, str(tmp_path / "vocab.ckpt"),
                                  lambda schema: schema["vocab"].update(user_id=schema["vocab"]["user_id"] + 5))
    elif case == "other data":
        ckpt = altered_checkpoint(trained, str(tmp_path / "data.ckpt"),
                                  lambda schema: schema.update(data_hash="0" * 16))
    elif case == "AIR on CPU":
        flags = ["--file-format", "AIR"]
    else:
        flags = ["--file-format", "ONNX", "--batch-size", "0"]
    result = run("export.py", "--ckpt", ckpt, "--data-root", trained[1], "--file-name", name, "--quiet", *flags)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in result.stderr
    if case == "AIR on CPU":
        assert "Ascend" in result.stderr
    assert all(f.endswith(".ckpt") for f in os.listdir(tmp_path))  # nothing exported
