"""benchmarks/run_results.py: every (row, seed) trained and evaluated once, recorded in the JSON,
run two at a time with --jobs 2, and not run again once the JSON records it."""
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import run_results  # noqa: E402

TINY = ["--synthetic-scale", "0.002", "--epochs", "1", "--max-steps", "2", "--batch-size", "256"]


def test_two_runs_at_a_time_are_recorded_once_each_and_reused(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(run_results.GROUPS, "tiny", [("IntTower", []), ("Two-Tower", ["--model", "two_tower"])])
    json_path = tmp_path / "results.json"
    argv = ["--dataset", "synthetic", "--groups", "tiny", "--seeds", "1", "--jobs", "2", "--data-root",
            str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"), "--json", str(json_path), "--extra", *TINY]
    run_results.main(argv)
    runs = json.loads(json_path.read_text())["runs"]
    assert sorted(r["model"] for r in runs) == ["inttower", "two_tower"]
    assert all(0 < r["test_auc"] < 1 and r["seed"] == 1 and r["epochs"] == 1 for r in runs)
    with open(tmp_path / "runs" / "model_two_tower_synthetic-scale_0.002_epochs_1_max-steps_2_batch-size_256"
              / "seed1" / "eval_metrics.json") as f:
        assert json.load(f)["config"]["model"] == "two_tower"

    mtime = json_path.stat().st_mtime_ns
    capsys.readouterr()
    run_results.main(argv[:-len(TINY) - 1] + ["--report", "--extra", *TINY])
    table = capsys.readouterr().out
    assert "| IntTower |" in table and "| Two-Tower |" in table
    assert json_path.stat().st_mtime_ns == mtime  # --report trains and writes nothing

    shutil.rmtree(tmp_path / "runs")
    run_results.main(argv)  # the JSON records both runs: nothing is trained again
    assert not (tmp_path / "runs").exists() and json.loads(json_path.read_text())["runs"] == runs


def test_the_converged_table_sets_each_model_beside_its_published_budget_runs(tmp_path, capsys):
    def record(model, flags, seed, auc):
        return {"model": model, "flags": run_results.model_flags(model) + run_results.STRICT + flags, "seed": seed,
                "test_auc": auc, "test_logloss": 0.3, "best_epoch": 10 + seed, "train_seconds": 120.0}
    converged = run_results.CONVERGED
    runs = [record("inttower", [], 1, 0.90), record("inttower", [], 2, 0.91),
            record("inttower", converged, 1, 0.92), record("inttower", converged, 2, 0.92),
            record("deepfm", converged, 1, 0.89)]  # DeepFM: one seed converged, no published-budget run
    json_path = tmp_path / "results.json"
    json_path.write_text(json.dumps({"dataset": "ml-1m", "runs": runs}))
    run_results.main(["--report", "--groups", "converged", "--seeds", "1", "2", "--json", str(json_path)])
    table = capsys.readouterr().out.split("### converged, against published budget")[1]
    assert "| IntTower | 0.9050 ± 0.0050 | 0.9200 ± 0.0000 | 0.3000 ± 0.0000 | +0.0150 | 11, 12 | 2 |" in table
    assert "| DeepFM | not run | 0.8900 ± 0.0000 (1 of 2 seeds) | 0.3000 ± 0.0000 |  | 11 | 2 |" in table
    assert "Two-Tower" not in table  # no runs, no row
