"""Data-parallel training under msrun: the shards, the global-batch CIR, and a 2-worker run
of train.py that ends with identical workers, resumes, and evaluates with eval.py."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from conftest import ROOT, run
from distributed import worker_rows
from module import CIRLoss

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msrun_cir_worker  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("msrun") is None, reason="msrun is installed with mindspore")
TINY = ["--dataset", "synthetic", "--synthetic-scale", "0.05", "--mlp-layers", "32", "16", "--feblock-size", "32",
        "--batch-size", "512"]
PORT_TAKEN = ("Repeated registration node", "Failed to init the tcp server")


def msrun(script, *args, cwd, workers=2):
    """`msrun` on a free port (retried if another job took it), bounded in time; -> (exit code,
    msrun's output and the worker logs). MS_NODE_TIMEOUT bounds the wait after a failing worker."""
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        logs = os.path.join(cwd, f"msrun-{port}")
        command = ["msrun", f"--worker_num={workers}", f"--local_worker_num={workers}", f"--master_port={port}",
                   f"--log_dir={logs}", "--join=True", "--cluster_time_out=60", script, *map(str, args)]
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=dict(os.environ, MS_NODE_TIMEOUT="10", PYTHONUNBUFFERED="1"))
        try:
            output, _ = process.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)  # msrun stops its workers on Ctrl-C
            output, _ = process.communicate()
        output += "".join(open(os.path.join(logs, f)).read() for f in sorted(os.listdir(logs)))
        if not any(text in output for text in PORT_TAKEN):
            return process.returncode, output
    return process.returncode, output


def test_each_worker_takes_its_slice_of_every_global_batch_and_every_row_is_used_once():
    order = np.random.default_rng(0).permutation(1000)
    for workers in (1, 2, 4):
        shards = [worker_rows(order, 100, rank, workers) for rank in range(workers)]
        assert all(len(shard) == 1000 // workers for shard in shards)
        np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(1000))
        for batch in range(10):  # global batch i is the same rows whatever the number of workers
            part = 100 // workers
            together = np.concatenate([shard[batch * part:(batch + 1) * part] for shard in shards])
            np.testing.assert_array_equal(together, order[batch * 100:(batch + 1) * 100])
    assert len(worker_rows(order[:950], 100, 0, 2)) == 450  # the short last batch is dropped


def test_two_workers_compute_the_one_process_cir_of_the_global_batch_and_its_gradient(tmp_path, graph_mode):
    code, output = msrun(os.path.join(ROOT, "tests", "msrun_cir_worker.py"), tmp_path, cwd=tmp_path)
    assert code == 0, output[-3000:]
    ranks = [np.load(tmp_path / f"rank{rank}.npz") for rank in (0, 1)]

    user_rep, item_rep, labels = (Tensor(array) for array in msrun_cir_worker.global_batch())
    cir = CIRLoss(msrun_cir_worker.TEMPERATURE)
    loss, (user_grad, item_grad) = ms.value_and_grad(cir, grad_position=(0, 1))(user_rep, item_rep, labels)

    # train.py averages the workers' losses and gradients
    assert np.mean([r["loss"] for r in ranks]) == pytest.approx(float(loss.asnumpy()), abs=1e-5)
    for name, expected in (("user_grad", user_grad), ("item_grad", item_grad)):
        averaged = np.concatenate([r[name] for r in ranks]) / 2
        np.testing.assert_allclose(averaged, expected.asnumpy(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """A 2-worker msrun training run of 1 epoch, then resumed to 2: (work dir, data root, outputs)."""
    work = tmp_path_factory.mktemp("msrun")
    data_root = work / "data"
    common = [*TINY, "--data-root", data_root, "--out-dir", work / "output"]  # not --quiet: the logs are read
    first = msrun(os.path.join(ROOT, "train.py"), *common, "--epochs", 1, cwd=work)
    resumed = msrun(os.path.join(ROOT, "train.py"), *common, "--epochs", 2, "--resume", cwd=work)
    return work, data_root, first, resumed


def test_two_workers_train_resume_and_end_with_identical_weights(two_workers):
    work, _, first, resumed = two_workers
    assert first[0] == 0, first[1][-3000:]
    assert resumed[0] == 0, resumed[1][-3000:]
    assert "resuming" in resumed[1] and "on 2 workers" in first[1]
    metrics = json.loads((work / "output" / "train_metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["workers"]["count"] == 2
    first_worker, second_worker = metrics["workers"]["parameter_checksums"]
    assert first_worker == second_worker
    # the global batch is --batch-size: 2 workers take the steps one process takes
    assert metrics["epochs"][0]["steps"] == metrics["epochs"][1]["steps"] == 17141 // 512


def test_the_main_worker_writes_single_process_checkpoints_that_eval_reads(two_workers):
    work, data_root, _, _ = two_workers
    assert sorted(os.listdir(work / "output")) == ["IntTower-last.ckpt", "IntTower.ckpt", "train_metrics.json"]
    result = run("eval.py", "--ckpt", work / "output" / "IntTower.ckpt", "--data-root", data_root, "--quiet",
                 cwd=work)
    assert result.stdout.startswith("test_auc=0.")


def test_a_global_batch_the_workers_do_not_divide_exits_2(tmp_path):
    code, output = msrun(os.path.join(ROOT, "train.py"), *TINY, "--batch-size", 511, "--data-root", tmp_path / "data",
                         cwd=tmp_path)
    assert code != 0 and "--batch-size 511 is the global batch: it must be a multiple of the 2 workers" in output
