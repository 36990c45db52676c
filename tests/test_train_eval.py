"""train.py and eval.py end to end on a small synthetic set, through their command lines."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import mindspore as ms
import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

import get_dataset
import ms_util
import util
from conftest import ROOT, run
from features import input_names
from model_config import Config
from networks import model_from_checkpoint

SCALE = "0.05"
TINY = ["--dataset", "synthetic", "--synthetic-scale", SCALE, "--mlp-layers", "32", "16", "--feblock-size", "32",
        "--batch-size", "512", "--quiet"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    get_dataset.load_dataset(Config(dataset="synthetic", synthetic_scale=float(SCALE)), str(root))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """A 3-epoch run: its working directory (holding output/)."""
    workdir = tmp_path_factory.mktemp("run")
    run("train.py", *TINY, "--data-root", data_root, "--epochs", 3, "--patience", 3, cwd=workdir)
    return workdir


@pytest.fixture(scope="module")
def evaluated(trained, data_root):
    """eval.py on the 3-epoch run with every output asked for: its run (the CSV is preds.csv)."""
    return run("eval.py", "--ckpt", "output/IntTower.ckpt", "--data-root", data_root, "--predictions", "preds.csv",
               "--published-metrics", "--quiet", cwd=trained)


def checkpoint_arrays(path):
    params, _ = ms_util.load_checkpoint(str(path))
    return {name: param.asnumpy() for name, param in params.items()}


def test_training_writes_best_and_last_checkpoints_and_metrics(trained):
    output = trained / "output"
    assert (output / "IntTower.ckpt").is_file() and (output / "IntTower-last.ckpt").is_file()
    metrics = json.loads((output / "train_metrics.json").read_text())
    assert metrics["config"]["mlp_layers"] == [32, 16]
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    for epoch in metrics["epochs"]:
        assert {"epoch", "train_loss", "valid_auc", "valid_logloss", "seconds", "samples_per_s"} <= set(epoch)
        assert 0.5 < epoch["valid_auc"] <= 1 and epoch["samples_per_s"] > 0
    assert not [name for name in os.listdir(output) if name.startswith(".tmp-")]


def test_training_loss_decreases_on_learnable_data(trained):
    losses = [e["train_loss"] for e in json.loads((trained / "output" / "train_metrics.json").read_text())["epochs"]]
    assert losses[-1] < losses[0]


def test_best_checkpoint_is_the_epoch_with_the_best_valid_auc(trained, data_root, graph_mode):
    metrics = json.loads((trained / "output" / "train_metrics.json").read_text())
    best = max(metrics["epochs"], key=lambda e: e["valid_auc"])
    assert metrics["best_epoch"] == best["epoch"]
    net, config, meta = model_from_checkpoint(str(trained / "output" / "IntTower.ckpt"))
    assert meta["epoch"] == best["epoch"]
    valid = get_dataset.load_dataset(config, str(data_root)).valid
    auc = util.global_metrics(valid["label"], ms_util.predict(net, valid, input_names(config)))["auc"]
    assert auc == pytest.approx(best["valid_auc"], abs=1e-6)


def test_eval_prints_global_auc_that_the_predictions_file_reproduces(trained, evaluated):
    printed = dict(re.findall(r"(test_auc|test_logloss)=([0-9.]+)", evaluated.stdout))
    table = np.loadtxt(trained / "preds.csv", delimiter=",", skiprows=1)
    labels, predictions = table[:, 0], table[:, 1]
    assert float(printed["test_auc"]) == pytest.approx(roc_auc_score(labels, predictions), abs=6e-5)
    assert float(printed["test_logloss"]) == pytest.approx(log_loss(labels, predictions), abs=6e-5)
    metrics = json.loads((trained / "output" / "eval_metrics.json").read_text())
    assert metrics["rows"] == len(labels) and metrics["config"]["mlp_layers"] == [32, 16]
    assert "test_auc=" in (trained / "auc.log").read_text().splitlines()[-1]


def test_eval_rebuilds_the_training_test_split_from_the_checkpoint_alone(trained, evaluated, data_root):
    labels = np.loadtxt(trained / "preds.csv", delimiter=",", skiprows=1)[:, 0]
    _, meta = ms_util.load_checkpoint(str(trained / "output" / "IntTower.ckpt"))
    test = get_dataset.load_dataset(Config(**meta["config"]), str(data_root)).test
    np.testing.assert_array_equal(labels, test["label"])
    assert len(labels) == meta["schema"]["rows"]["test"]


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path, data_root):
    flags = [*TINY, "--data-root", data_root, "--deterministic", "--patience", 5]
    run("train.py", *flags, "--epochs", 2, "--out-dir", "straight", cwd=tmp_path)
    run("train.py", *flags, "--epochs", 1, "--out-dir", "resumed", cwd=tmp_path)
    run("train.py", *flags, "--epochs", 2, "--out-dir", "resumed", "--resume", cwd=tmp_path)
    straight = checkpoint_arrays(tmp_path / "straight" / "IntTower-last.ckpt")
    resumed = checkpoint_arrays(tmp_path / "resumed" / "IntTower-last.ckpt")
    assert straight.keys() == resumed.keys()
    for name in straight:
        np.testing.assert_array_equal(straight[name], resumed[name], err_msg=name)
    history = json.loads((tmp_path / "resumed" / "train_metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in history] == [1, 2]


def test_resume_refuses_flags_that_change_the_model(trained, data_root):
    result = run("train.py", *TINY, "--data-root", data_root, "--resume", "--lr", "0.1", cwd=trained, check=False)
    assert result.returncode == 2 and "lr" in result.stderr and "Traceback" not in result.stderr


def test_ctrl_c_saves_a_checkpoint_that_resume_continues(tmp_path, data_root):
    command = [sys.executable, os.path.join(ROOT, "train.py"), *TINY, "--data-root", str(data_root),
               "--epochs", "1000", "--patience", "1000"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "output" / "IntTower-last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted" in stderr, stderr[-2000:]
    _, meta = ms_util.load_checkpoint(str(last))
    done = meta["progress"]["epoch"]
    assert 1 <= done < 1000
    run("train.py", *TINY, "--data-root", data_root, "--resume", "--epochs", done + 1, cwd=tmp_path)
    history = json.loads((tmp_path / "output" / "train_metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in history] == list(range(1, done + 2))


def test_diverging_training_stops_and_keeps_the_last_good_checkpoint(trained, tmp_path, data_root):
    shutil.copytree(trained / "output", tmp_path / "output")
    before = (tmp_path / "output" / "IntTower-last.ckpt").read_bytes()
    result = run("train.py", *TINY, "--data-root", data_root, "--lr", "1e30", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "diverged" in result.stderr and "--lr" in result.stderr
    assert (tmp_path / "output" / "IntTower-last.ckpt").read_bytes() == before


def test_eval_and_export_find_the_runs_checkpoint_also_under_its_earlier_name(trained, tmp_path, data_root):
    """A run of an earlier version named every model's checkpoint IntTower.ckpt; renamed, it is the
    run's only best checkpoint and is still found without --ckpt."""
    metrics = json.loads((trained / "output" / "train_metrics.json").read_text())
    (tmp_path / "output").mkdir()
    shutil.copy(trained / "output" / "IntTower.ckpt", tmp_path / "output" / "IntTower.ckpt")
    metrics["config"]["model"] = "two_tower"  # its own name would be TwoTower.ckpt
    (tmp_path / "output" / "train_metrics.json").write_text(json.dumps(metrics))
    result = run("eval.py", "--data-root", data_root, "--quiet", cwd=tmp_path)
    assert result.stdout.startswith("test_auc=")
    run("export.py", "--data-root", data_root, "--quiet", cwd=tmp_path)
    assert (tmp_path / "output" / "IntTower.mindir").is_file()


def test_eval_refuses_a_missing_or_foreign_checkpoint(tmp_path, data_root):
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    for ckpt in ("missing.ckpt", "garbage.ckpt"):
        result = run("eval.py", "--ckpt", ckpt, "--data-root", data_root, cwd=tmp_path, check=False)
        assert result.returncode == 2 and ckpt in result.stderr and "Traceback" not in result.stderr


def resave_with(source, target, change_meta):
    params, meta = ms_util.load_checkpoint(str(source))
    change_meta(meta)
    ms.save_checkpoint([{"name": name, "data": param} for name, param in params.items()], str(target),
                       append_dict={"meta_json": json.dumps(meta)})


def test_eval_refuses_a_checkpoint_that_does_not_match_the_code_or_the_data(trained, tmp_path, data_root):
    best = trained / "output" / "IntTower.ckpt"
    resave_with(best, tmp_path / "other_model.ckpt", lambda meta: meta["config"].update(mlp_layers=[64, 16]))
    resave_with(best, tmp_path / "other_data.ckpt", lambda meta: meta["schema"]["rows"].update(test=1))
    for ckpt, message in (("other_model.ckpt", "does not fit"), ("other_data.ckpt", "not the data")):
        result = run("eval.py", "--ckpt", ckpt, "--data-root", data_root, cwd=tmp_path, check=False)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flags, named", [
    (["--lr", "-1"], "--lr"), (["--feblock-size", "10"], "--feblock-size"), (["--keep-rate", "1.5"], "--keep-rate"),
    (["--cir-temperature", "0.01"], "--cir-temperature"), (["--resume"], "nothing to resume"),
    (["--deterministic", "--threads", "2"], "--threads"), (["--threads", "0"], "--threads")])
def test_bad_flags_exit_2_with_one_message(tmp_path, flags, named):
    result = run("train.py", "--dataset", "synthetic", *flags, cwd=tmp_path, check=False)
    assert result.returncode == 2 and named in result.stderr and "Traceback" not in result.stderr


def test_published_metrics_report_the_per_batch_auc_mean_and_the_redrawn_split_auc(trained, evaluated, data_root,
                                                                                    graph_mode):
    table = np.loadtxt(trained / "preds.csv", delimiter=",", skiprows=1)
    batches = [table[start:start + 512] for start in range(0, len(table), 512)]
    batch_mean = np.mean([roc_auc_score(b[:, 0], b[:, 1]) for b in batches if 0 < b[:, 0].sum() < len(b)])
    published = json.loads((trained / "output" / "eval_metrics.json").read_text())["published"]
    assert published["batch_mean_auc"] == pytest.approx(batch_mean, abs=1e-6)
    # the published eval.py's test split: seed 2012, not the training seed
    net, config, _ = model_from_checkpoint(str(trained / "output" / "IntTower.ckpt"))
    redrawn = get_dataset.load_dataset(Config(**dict(vars(config), seed=2012)), str(data_root)).test
    auc = util.global_metrics(redrawn["label"], ms_util.predict(net, redrawn, input_names(config)))["auc"]
    assert published["redrawn_split_auc"] == pytest.approx(auc, abs=1e-6)
    assert "published_redrawn_split_batch_mean_auc=" in evaluated.stdout


def test_no_train_mode_trains_as_the_published_code_with_batchnorm_statistics_frozen(tmp_path, data_root, trained):
    run("train.py", *TINY, "--data-root", data_root, "--epochs", 1, "--max-steps", 3, "--no-train-mode", cwd=tmp_path)
    frozen, trained_normally = (checkpoint_arrays(path / "output" / "IntTower-last.ckpt") for path in (tmp_path, trained))
    moving = [name for name in frozen if "moving_" in name]
    assert moving
    for name in moving:
        np.testing.assert_array_equal(frozen[name], 0.0 if "mean" in name else 1.0)
    assert any(not np.allclose(trained_normally[name], 0.0 if "mean" in name else 1.0) for name in moving)
