"""benchmarks/tune.py: the search trains each trial with train.py on the strict protocol, keeps the
best valid AUC's settings per model, and resumes from its SQLite storage or, without it, from its
history JSON; IntTower's choice on ML-1M is train.py's --preset tuned-ml1m."""
import json
import os
import sys

import optuna

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import run_results  # noqa: E402
import tune  # noqa: E402

import model_config  # noqa: E402
import train  # noqa: E402

TINY = ["--synthetic-scale", "0.002", "--max-steps", "2", "--batch-size", "256", "--sparse-embedding-dim", "8"]


def shared_distributions():
    """The search space of the knobs every model shares, as tune.suggest declares it."""
    study = optuna.create_study()
    tune.suggest(study.ask(), "two_tower")
    return study.trials[0].distributions


def best_valid_auc(trial_dir):
    with open(os.path.join(trial_dir, "train_metrics.json")) as f:
        return max(epoch["valid_auc"] for epoch in json.load(f)["epochs"])


def test_the_search_keeps_the_best_trial_per_model_unless_the_published_settings_beat_it_and_resumes(tmp_path, capsys):
    argv = ["--dataset", "synthetic", "--models", "two_tower", "dssm", "--jobs", "2", "--epochs", "1",
            "--data-root", str(tmp_path / "data"), "--storage", str(tmp_path / "optuna.db"),
            "--runs-dir", str(tmp_path / "runs"), "--json", str(tmp_path / "tuned.json"),
            "--history", str(tmp_path / "history.json"), "--extra", *TINY]
    tune.main(["--trials", "1", *argv])
    published_run = tmp_path / "runs" / "synthetic" / "dssm" / "published" / "train_metrics.json"
    first_published_run = published_run.stat().st_mtime_ns
    tune.main(["--trials", "2", *argv])  # one trial more per model, not two
    (tmp_path / "optuna.db").unlink()  # a new machine: the search goes on from the history JSON
    tune.main(["--trials", "3", *argv])
    assert published_run.stat().st_mtime_ns == first_published_run  # the published settings ran once
    capsys.readouterr()  # the search's own messages
    tune.main(["--report", "--trials", "3", *argv])
    table = [row.split(" | ") for row in capsys.readouterr().out.splitlines()[2:]]
    tuned = json.loads((tmp_path / "tuned.json").read_text())
    history = json.loads((tmp_path / "history.json").read_text())
    assert sorted(tuned) == sorted(history) == ["dssm", "two_tower"]
    for model, chosen in tuned.items():
        runs = tmp_path / "runs" / "synthetic" / model
        assert sorted(os.listdir(runs)) == ["published", "trial0", "trial1", "trial2"]
        assert [trial["number"] for trial in history[model]["trials"]] == [0, 1, 2]
        # each resumption drew settings of its own, not the first run's again
        assert len({json.dumps(trial["params"], sort_keys=True) for trial in history[model]["trials"]}) == 3
        # and the k-th trial of every model took the k-th common draw of the shared knobs
        assert [{name: trial["params"][name] for name in tune.SHARED} for trial in history[model]["trials"]] == \
            tune.common_draws(3)
        assert all(trial["user_attrs"]["seconds"] >= 0 for trial in history[model]["trials"])
        assert [trial["value"] for trial in history[model]["trials"]] == \
            [best_valid_auc(runs / f"trial{number}") for number in range(3)]
        assert chosen["trials"] == 3
        row = next(row for row in table if row[0] == f"| {model}")
        assert row[1:5] == ["3 (0)", f"{chosen['search_valid_auc']:.4f}", f"{chosen['published_valid_auc']:.4f}",
                            chosen["chosen"]]
        assert chosen["search_valid_auc"] == max(best_valid_auc(runs / f"trial{number}") for number in range(3))
        assert chosen["published_valid_auc"] == history[model]["published_valid_auc"] == \
            best_valid_auc(runs / "published")
        assert chosen["valid_auc"] == max(chosen["search_valid_auc"], chosen["published_valid_auc"])
        flags = chosen["flags"]
        if chosen["chosen"] == "published":
            assert flags == [] and chosen["params"]["lr"] == model_config.Config().lr
        else:
            assert chosen["chosen"] == "search" and chosen["search_valid_auc"] > chosen["published_valid_auc"]
            assert flags[flags.index("--lr") + 1] and "--keep-rate" in flags and "--mlp-layers" in flags
            assert ("--dssm-gamma" in flags) == (model == "dssm")


def test_a_model_chooses_among_its_trials_at_the_common_draws_only(tmp_path, capsys):
    """Trials an earlier search drew apart from the common draws stay in the history (and their time
    in the job-hours) but are not chosen from, however good: every model is compared at the same points."""
    distributions = {name: optuna.distributions.distribution_to_json(distribution)
                     for name, distribution in shared_distributions().items()}
    draws = tune.common_draws(3)
    apart = {**draws[0], "lr": 0.0099}

    def trial(number, params, value, state="COMPLETE"):
        stopped = {"stopped_by": "CommonDrawsPruner"} if state == "PRUNED" else {}
        return {"number": number, "state": state, "value": value, "params": params,
                "user_attrs": {"flags": ["--lr", str(params["lr"])], "seconds": 600, **stopped},
                "valid_auc_by_epoch": {"1": value}, "distributions": distributions}
    history = {"dssm": {"trials": [trial(0, draws[0], 0.80), trial(1, apart, 0.95), trial(2, draws[1], 0.83, "PRUNED"),
                                   trial(3, draws[2], 0.85)],
                        "published_valid_auc": 0.82, "published_seconds": 600}}
    (tmp_path / "history.json").write_text(json.dumps(history))
    argv = ["--dataset", "synthetic", "--models", "dssm", "--trials", "3", "--storage", str(tmp_path / "optuna.db"),
            "--runs-dir", str(tmp_path / "runs"), "--json", str(tmp_path / "tuned.json"),
            "--history", str(tmp_path / "history.json")]
    tune.main(argv)  # nothing left to train: the history holds every draw and the published run
    assert not (tmp_path / "runs").exists()
    chosen = json.loads((tmp_path / "tuned.json").read_text())["dssm"]
    assert (chosen["chosen"], chosen["search_valid_auc"]) == ("search", 0.85)
    assert chosen["flags"] == ["--lr", str(draws[2]["lr"])] and chosen["trials"] == 3
    capsys.readouterr()
    tune.main(["--report", *argv])
    row = capsys.readouterr().out.splitlines()[2].split(" | ")
    assert row[1:4] == ["3 (1) + 1 not counted", "0.8500", "0.8200"]
    assert row[-1] == "0.8 |"  # 5 runs of 10 minutes (0.83 h), the uncounted one included


def test_a_trial_cut_short_goes_on_from_its_last_epoch_in_its_own_folder(tmp_path):
    """A search killed mid-trial (its process gone, the trial left RUNNING in the SQLite file) continues
    that trial's training with train.py --resume when it starts again, rather than its draw from scratch."""
    argv = ["--dataset", "synthetic", "--models", "two_tower", "--trials", "1", "--data-root", str(tmp_path / "data"),
            "--storage", str(tmp_path / "optuna.db"), "--runs-dir", str(tmp_path / "runs"),
            "--json", str(tmp_path / "tuned.json"), "--history", str(tmp_path / "history.json"), "--extra", *TINY]
    folder = tmp_path / "runs" / "synthetic" / "two_tower" / "trial0"
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=storage, study_name="synthetic-two_tower", direction="maximize")
    study.enqueue_trial(tune.common_draws(1)[0])
    cut_short = study.ask()  # RUNNING, as a killed search leaves it
    flags = tune.suggest(cut_short, "two_tower")
    tune.train(tune.parse_args(["--epochs", "1", *argv]), "two_tower", flags, str(folder))  # its first epoch
    first_epoch = json.loads((folder / "train_metrics.json").read_text())["epochs"]

    tune.main(["--epochs", "2", *argv])
    epochs = json.loads((folder / "train_metrics.json").read_text())["epochs"]
    assert len(epochs) == 2 and epochs[0] == first_epoch[0]  # the first epoch was not trained again
    assert sorted(os.listdir(folder.parent)) == ["published", "trial0"]
    counted = json.loads((tmp_path / "history.json").read_text())["two_tower"]["trials"]
    assert len(counted) == 1 and counted[0]["user_attrs"]["folder"] == "trial0"
    assert counted[0]["value"] == max(epoch["valid_auc"] for epoch in epochs)
    assert counted[0]["user_attrs"]["seconds"] >= round(first_epoch[0]["seconds"])  # its time before the cut too
    assert [trial.state for trial in optuna.load_study(study_name="synthetic-two_tower", storage=storage).trials] \
        == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]


def test_a_search_killed_between_trials_fails_what_it_left_started_or_queued_and_adds_no_trial(tmp_path):
    """A killed search can leave a trial RUNNING (mid-training) or WAITING (queued at its draw, not yet
    started); on restart both end FAILed, the RUNNING one at a common draw offered to go on in its folder."""
    draws = tune.common_draws(2)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(draws[0], user_attrs={"folder": "trial0"})
    tune.suggest(study.ask(), "two_tower")  # RUNNING, with its params
    (tmp_path / "trial0").mkdir()
    (tmp_path / "trial0" / "TwoTower-last.ckpt").write_bytes(b"")
    study.enqueue_trial(draws[1])  # WAITING

    resumable = tune.cut_short(study, str(tmp_path), draws)
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    assert resumable == {0: (draws[0], "trial0")}


def test_a_trial_is_stopped_early_against_the_trials_at_the_common_draws_only():
    """A model with trials an earlier search drew apart faces the same bar as a model searched afresh."""
    draws = tune.common_draws(4)
    distributions = shared_distributions()
    study = optuna.create_study(direction="maximize")

    def add(params, auc_at_epoch_2, state=optuna.trial.TrialState.COMPLETE):
        return optuna.trial.create_trial(state=state, value=auc_at_epoch_2 if state.is_finished() else None,
                                         params=params, distributions=distributions,
                                         intermediate_values={1: auc_at_epoch_2 - 0.01, 2: auc_at_epoch_2})

    for draw, auc in zip(draws, (0.80, 0.82)):
        study.add_trial(add(draw, auc))
    running = add(draws[3], 0.83, optuna.trial.TrialState.RUNNING)
    pruner = tune.CommonDrawsPruner(draws)
    assert not pruner.prune(study, running)  # two trials at the draws: too few to judge by
    study.add_trial(add(draws[2], 0.84))
    for apart in (0.90, 0.91):  # an earlier search's trials, drawn apart
        study.add_trial(add({**draws[0], "lr": 0.0099}, apart))
    assert not pruner.prune(study, running)  # 0.83 against the draws' median 0.82
    assert optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2).prune(study, running)  # 0.84: all five
    assert pruner.prune(study, add(draws[3], 0.81, optuna.trial.TrialState.RUNNING))


def test_the_tuned_preset_is_the_searchs_inttower_choice_trained_as_the_tuned_table_trains_it():
    with open(os.path.join(tune.ROOT, "benchmarks", "tuned_ml1m.json")) as f:
        chosen = json.load(f)["inttower"]["params"]
    preset = model_config.PRESETS["tuned-ml1m"]
    assert preset["mlp_layers"] == tune.WIDTHS[chosen["mlp_layers"]]
    assert {name: preset[name] for name in chosen if name != "mlp_layers"} == \
        {name: value for name, value in chosen.items() if name != "mlp_layers"}
    converged = run_results.CONVERGED
    assert [preset["epochs"], preset["patience"]] == [int(converged[1]), int(converged[3])]


def test_a_preset_replaces_the_published_defaults_and_flags_still_override_it():
    published = model_config.config_from_args(train.parse_args([]))
    tuned = model_config.config_from_args(train.parse_args(["--preset", "tuned-ml1m", "--lr", "0.002"]))
    assert published == model_config.Config()
    assert tuned.lr == 0.002
    assert tuned.keep_rate == model_config.PRESETS["tuned-ml1m"]["keep_rate"]
    assert tuned.epochs == 50 != published.epochs and tuned.patience == 3
