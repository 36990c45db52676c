"""benchmarks/tune.py: the search trains each trial with train.py on the strict protocol, keeps the
best valid AUC's settings per model, and resumes from its SQLite storage."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import tune  # noqa: E402

TINY = ["--synthetic-scale", "0.002", "--max-steps", "2", "--batch-size", "256", "--sparse-embedding-dim", "8"]


def best_valid_auc(trial_dir):
    with open(os.path.join(trial_dir, "train_metrics.json")) as f:
        return max(epoch["valid_auc"] for epoch in json.load(f)["epochs"])


def test_the_search_keeps_the_best_trial_per_model_and_resumes(tmp_path):
    argv = ["--dataset", "synthetic", "--models", "two_tower", "dssm", "--jobs", "2", "--epochs", "1",
            "--data-root", str(tmp_path / "data"), "--storage", str(tmp_path / "optuna.db"),
            "--runs-dir", str(tmp_path / "runs"), "--json", str(tmp_path / "tuned.json")]
    tune.main(argv + ["--trials", "1", "--extra", *TINY])
    tune.main(argv + ["--trials", "2", "--extra", *TINY])  # one trial more per model, not two
    tuned = json.loads((tmp_path / "tuned.json").read_text())
    assert sorted(tuned) == ["dssm", "two_tower"]
    for model, chosen in tuned.items():
        trials = tmp_path / "runs" / "synthetic" / model
        assert sorted(os.listdir(trials)) == ["trial0", "trial1"]
        assert chosen["trials"] == 2
        assert chosen["valid_auc"] == max(best_valid_auc(trials / name) for name in ("trial0", "trial1"))
        flags = chosen["flags"]
        assert flags[flags.index("--lr") + 1] and "--keep-rate" in flags and "--mlp-layers" in flags
    assert "--dssm-gamma" in tuned["dssm"]["flags"] and "--dssm-gamma" not in tuned["two_tower"]["flags"]
