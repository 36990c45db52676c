"""Tune every Table-2 model on validation, the same way for each: an Optuna random search over its
learning rate, dropout keep rate, MLP width and embedding L2, and the knobs of its own (IntTower's
CIR weight and temperature, DSSM's and DAT's cosine scale, DAT's mimic weight, DCN's cross layers,
AutoInt's attention layers), the same number of trials and the same training budget for every model.
Every model's k-th trial takes the same k-th draw of the four shared knobs (common_draws), its own
knobs drawn at random: with a few trials, models drawn apart would be compared at points of their own
luck, not at the same points.

python benchmarks/tune.py [--dataset ml-1m] [--models two_tower dcn ...] [--trials 4] [--jobs 2]
                          [--storage runs/tune/optuna.db] [--json benchmarks/tuned_ml1m.json]
                          [--history benchmarks/tune_history_ml1m.json] [--report]

Each trial is `python train.py --protocol strict --seed 1 --epochs E --patience 2 FLAGS`, run as a
user runs it; its value is its best valid AUC (train_metrics.json), reported epoch by epoch so that
a trial well below the median of the model's trials at the common draws is stopped early
(CommonDrawsPruner, Optuna's median rule over those trials only). The test split is
never read. After its trials each model trains once more with its published settings
(model_config.py) on the same budget, unpruned: the search chooses its best trial only where that
beats the published settings on validation, so a short search cannot leave a model worse off than
untuned. The search lives in a SQLite file, so an interrupted search resumes where it stopped (a
trial or published run cut short continues from its last epoch with train.py --resume); every
finished trial is also written to --history, a JSON beside the results, from which a search whose
SQLite file was lost (a new machine) is rebuilt before it goes on. The chosen settings, per model, go to --json; run_results.py's `tuned` group
trains them with seeds 1, 2 and 3 and evaluates them on test. With --jobs N, N models are searched
at a time, IntTower first, each trial on cores/N CPU threads.
"""
import argparse
import concurrent.futures
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import optuna

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from model_config import Config  # noqa: E402
from run_results import TABLE2, model_flags  # noqa: E402
from util import write_json  # noqa: E402

WIDTHS = {"300-300-128": [300, 300, 128], "256-128": [256, 128], "400-400-400": [400, 400, 400],
          "1024-512-256": [1024, 512, 256]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-1m", help="default ml-1m")
    parser.add_argument("--data-root", default="data", help="default data/")
    parser.add_argument("--models", nargs="+", choices=TABLE2, default=TABLE2,
                        help="default: the nine of Table 2, searched IntTower first")
    parser.add_argument("--trials", type=int, default=4,
                        help="trials per model, at the first N common draws (default 4); trials an earlier search "
                             "drew apart stay in the history but are not chosen from")
    parser.add_argument("--epochs", type=int, default=30, help="epoch cap of a trial (default 30; patience 2)")
    parser.add_argument("--seed", type=int, default=1, help="the split the search validates on (default 1)")
    parser.add_argument("--storage", default=os.path.join("runs", "tune", "optuna.db"), help="the search's SQLite file")
    parser.add_argument("--runs-dir", default=os.path.join("runs", "tune"), help="where trials train")
    parser.add_argument("--json", help="the chosen settings (default benchmarks/tuned_<dataset>.json)")
    parser.add_argument("--history", help="every finished trial, from which a lost --storage is rebuilt "
                                          "(default benchmarks/tune_history_<dataset>.json)")
    parser.add_argument("--jobs", type=int, choices=range(1, 33), default=1, metavar="N",
                        help="models searched at a time, each trial on cores/N CPU threads (as run_results.py)")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: print the search so far (from --history and --json) as a markdown table")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="flags added to every trial's train.py (e.g. --synthetic-scale 0.05 to try the search)")
    return parser.parse_args(argv)


def suggest(trial, model):
    """One point of the search space: train.py flags."""
    width = trial.suggest_categorical("mlp_layers", list(WIDTHS))
    flags = ["--lr", str(trial.suggest_float("lr", 1e-4, 1e-2, log=True)),
             "--keep-rate", str(trial.suggest_float("keep_rate", 0.5, 1.0)),
             "--l2-embedding", str(trial.suggest_float("l2_embedding", 1e-8, 1e-3, log=True)),
             "--mlp-layers", *map(str, WIDTHS[width])]
    if model == "inttower":
        flags += ["--cir-weight", str(trial.suggest_float("cir_weight", 0.0, 3.0)),
                  "--cir-temperature", str(trial.suggest_float("cir_temperature", 0.02, 1.0, log=True))]
    if model in ("dssm", "dat"):  # gamma 1 caps the logit at +-1 (model_config.py)
        flags += ["--dssm-gamma", str(trial.suggest_float("dssm_gamma", 1.0, 50.0, log=True))]
    if model == "dat":
        flags += ["--dat-mimic-weight", str(trial.suggest_float("dat_mimic_weight", 0.01, 3.0, log=True))]
    if model == "dcn":
        flags += ["--dcn-cross-num", str(trial.suggest_int("dcn_cross_num", 1, 4))]
    if model == "autoint":
        flags += ["--autoint-layers", str(trial.suggest_int("autoint_layers", 1, 3))]
    return flags


def train(args, model, flags, out_dir, trial=None):
    """Run train.py with the search's budget in `out_dir` (continuing the run there, if one was cut
    short), reporting each epoch's valid AUC to `trial` (which may stop it early); -> its best valid AUC."""
    os.makedirs(out_dir, exist_ok=True)
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--dataset", args.dataset, "--protocol", "strict",
               "--seed", str(args.seed), "--epochs", str(args.epochs), "--patience", "2", "--out-dir", out_dir,
               "--data-root", args.data_root, "--quiet", *model_flags(model), *flags, *args.extra]
    if args.jobs > 1:
        command += ["--threads", str(max(1, os.cpu_count() // args.jobs))]
    if glob.glob(os.path.join(out_dir, "*-last.ckpt")):
        command.append("--resume")
    with open(os.path.join(out_dir, "train.log"), "a") as log:
        process = subprocess.Popen(command, stderr=log)
        reported = 0
        while True:
            running = process.poll() is None
            for epoch in recorded_epochs(out_dir)[reported:]:
                reported += 1
                if trial is None:
                    continue
                trial.report(epoch["valid_auc"], epoch["epoch"])
                if running and trial.should_prune():
                    process.send_signal(signal.SIGINT)  # train.py stops after the step it is in
                    process.wait()
                    raise optuna.TrialPruned()
            if not running:
                break
            time.sleep(2)
    if process.returncode != 0:
        raise RuntimeError(f"failed ({os.path.join(out_dir, 'train.log')}): {' '.join(command)}")
    return max(epoch["valid_auc"] for epoch in recorded_epochs(out_dir))


def recorded_epochs(out_dir):
    """The epochs train_metrics.json records so far (train.py replaces it whole after each)."""
    path = os.path.join(out_dir, "train_metrics.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return json.load(f)["epochs"]


SHARED = ("mlp_layers", "lr", "keep_rate", "l2_embedding")


def common_draws(count):
    """The shared knobs of every model's first `count` trials: one seeded random sequence, drawn as
    suggest draws them for a model without knobs of its own."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "a new study created in memory" per model
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    optuna.logging.set_verbosity(verbosity)  # the search's own trial log stays
    draws = []
    for _ in range(count):
        trial = study.ask()
        suggest(trial, "two_tower")
        draws.append(trial.params)
    return draws


def at_draws(params, draws):
    """Whether the shared knobs of `params` are one of `draws`."""
    return {name: params.get(name) for name in SHARED} in draws


class CommonDrawsPruner(optuna.pruners.BasePruner):
    """Optuna's MedianPruner rule (from epoch 2, once 3 trials have completed, stop a trial whose best
    valid AUC so far is below their median at that epoch) over the completed trials at the common draws
    only: trials an earlier search drew apart would set a bar that a model searched afresh never faces."""

    def __init__(self, draws):
        self.draws = draws

    def prune(self, study, trial):
        epoch = trial.last_step
        peers = [peer for peer in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                 if at_draws(peer.params, self.draws)]
        if epoch is None or epoch < 2 or len(peers) < 3:
            return False
        at_epoch = [peer.intermediate_values[epoch] for peer in peers if epoch in peer.intermediate_values]
        return bool(at_epoch) and max(trial.intermediate_values.values()) < float(np.median(at_epoch))


def trained_seconds(out_dir):
    """The training and validation time of the epochs recorded in `out_dir`."""
    return sum(epoch["seconds"] + epoch.get("valid_seconds", 0) for epoch in recorded_epochs(out_dir))


def cut_short(study, trials_dir, draws):
    """The trials a stopped search left RUNNING or WAITING (a model's trials run one at a time, in one
    process) end FAILed -> {draw's index: (params, folder)}: at each common draw, the settings and
    folder under `trials_dir` of the one that trained the most epochs, to go on from its last epoch
    instead of starting the draw over."""
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,
                                                      optuna.trial.TrialState.WAITING))
    resumable = {}
    for trial in sorted(trials, key=lambda trial: trial.number):
        if trial.state == optuna.trial.TrialState.WAITING:
            study.ask()  # Optuna tells only a started trial; ask() starts the oldest WAITING one, this one
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        folder = trial.user_attrs.get("folder", f"trial{trial.number}")
        epochs = len(recorded_epochs(os.path.join(trials_dir, folder)))
        if at_draws(trial.params, draws) and glob.glob(os.path.join(trials_dir, folder, "*-last.ckpt")):
            draw = draws.index({name: trial.params[name] for name in SHARED})
            if epochs > resumable.get(draw, (None, None, -1))[2]:
                resumable[draw] = (trial.params, folder, epochs)
    return {draw: (params, folder) for draw, (params, folder, _) in resumable.items()}


def published_params(names):
    """The published value (model_config.Config) of each searched parameter, as suggest names it."""
    defaults = Config()
    return {name: "-".join(map(str, defaults.mlp_layers)) if name == "mlp_layers" else getattr(defaults, name)
            for name in names}


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def study_record(study):
    """A study's finished trials and published run as JSON: enough to rebuild it as it was."""
    return {"trials": [{"number": trial.number, "state": trial.state.name, "value": trial.value,
                        "params": trial.params, "user_attrs": trial.user_attrs,
                        "valid_auc_by_epoch": {str(epoch): auc for epoch, auc in trial.intermediate_values.items()},
                        "distributions": {name: optuna.distributions.distribution_to_json(distribution)
                                          for name, distribution in trial.distributions.items()}}
                       for trial in study.get_trials(deepcopy=False, states=FINISHED)],
            "published_valid_auc": study.user_attrs.get("published_valid_auc"),
            "published_seconds": study.user_attrs.get("published_seconds")}


def restore(study, record):
    """Add the finished trials (and the published run) of `record` to an empty study."""
    for trial in record["trials"]:
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState[trial["state"]], value=trial["value"], params=trial["params"],
            distributions={name: optuna.distributions.json_to_distribution(distribution)
                           for name, distribution in trial["distributions"].items()},
            intermediate_values={int(epoch): auc for epoch, auc in trial["valid_auc_by_epoch"].items()},
            user_attrs=trial["user_attrs"]))
    for name in ("published_valid_auc", "published_seconds"):
        if record[name] is not None:
            study.set_user_attr(name, record[name])


def search(args, storage, model, record, save):
    """Run `model`'s study until it has --trials finished trials, then its published settings once
    (kept in the study, so that a finished search does not run them again), calling save(study)
    after each; a study missing from `storage` starts from `record` (the history) -> the chosen
    settings: the best trial's, or the published ones where the trials did not beat them on validation."""
    draws = common_draws(args.trials)
    study = optuna.create_study(storage=storage, study_name=f"{args.dataset}-{model}", direction="maximize",
                                load_if_exists=True, pruner=CommonDrawsPruner(draws))
    if record and not study.trials:
        restore(study, record)
    # the model's own knobs; seeded by the trials so far, so that a resumed search draws them anew
    study.sampler = optuna.samplers.RandomSampler(seed=len(study.trials))
    trials_dir = os.path.join(args.runs_dir, args.dataset, model)
    resumable = cut_short(study, trials_dir, draws)

    def objective(trial):
        flags = suggest(trial, model)
        folder = trial.user_attrs.get("folder", f"trial{trial.number}")
        trial.set_user_attr("flags", flags)
        trial.set_user_attr("folder", folder)
        start, earlier = time.time(), trained_seconds(os.path.join(trials_dir, folder))
        try:
            return train(args, model, flags, os.path.join(trials_dir, folder), trial)
        except optuna.TrialPruned:
            trial.set_user_attr("stopped_by", "CommonDrawsPruner")  # a trial stopped by another rule is not counted
            raise
        finally:  # a stopped trial's time counts too, and a resumed one's before it was cut short
            trial.set_user_attr("seconds", round(time.time() - start + earlier))

    for index, draw in enumerate(draws):
        while trial_at(study_record(study)["trials"], draw) is None:
            params, folder = resumable.pop(index, (draw, None))
            study.enqueue_trial(params, user_attrs={"folder": folder} if folder else None)
            study.optimize(objective, n_trials=1)
            save(study)
    if "published_valid_auc" not in study.user_attrs:
        start = time.time() - trained_seconds(os.path.join(trials_dir, "published"))  # a resumed run's earlier part
        study.set_user_attr("published_valid_auc", train(args, model, [], os.path.join(trials_dir, "published")))
        study.set_user_attr("published_seconds", round(time.time() - start))
        save(study)
    counted = [trial_at(study_record(study)["trials"], draw) for draw in draws]
    best = max((trial for trial in counted if trial["state"] == "COMPLETE"),
               key=lambda trial: trial["value"])  # a stopped trial has no final value
    published_auc = study.user_attrs["published_valid_auc"]
    searched = best["value"] > published_auc
    return {"flags": best["user_attrs"]["flags"] if searched else [],
            "valid_auc": best["value"] if searched else published_auc,
            "params": best["params"] if searched else published_params(best["params"]),
            "chosen": "search" if searched else "published", "search_valid_auc": best["value"],
            "published_valid_auc": published_auc, "trials": args.trials, "epochs": args.epochs, "seed": args.seed}


def trial_at(trials, draw):
    """The trial that counts for `draw`: the first of `trials` (finished, as study_record writes them) at
    those shared knobs that completed or was stopped by CommonDrawsPruner, or None."""
    return min((trial for trial in trials if at_draws(trial["params"], [draw])
                and (trial["state"] == "COMPLETE" or "stopped_by" in trial["user_attrs"])),
               key=lambda trial: trial["number"], default=None)


def read_json(path):
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def report(models, history, chosen, count):
    """The search so far as markdown: per model its trials at the `count` common draws (and any others,
    run by an earlier search that drew them apart, which are not chosen from), the best trial's and the
    published settings' valid AUC, the choice and its settings, and the job-hours spent, on every trial."""
    draws = common_draws(count)
    lines = ["| model | common draws run (stopped early) | valid AUC: best trial | published settings | chosen | "
             "settings | search, job-hours |", "| --- | ---: | ---: | ---: | --- | --- | ---: |"]
    for model in models:
        record = history.get(model)
        if record is None:
            lines.append(f"| {model} | queued | | | | | |")
            continue
        trials = [trial for trial in (trial_at(record["trials"], draw) for draw in draws) if trial]
        beyond = len(record["trials"]) - len(trials)
        stopped = sum(trial["state"] == "PRUNED" for trial in trials)
        best = max((trial["value"] for trial in trials if trial["state"] == "COMPLETE"), default=None)
        published = record["published_valid_auc"]
        # the choice is made after every draw and the published run
        choice = chosen.get(model) if published is not None and len(trials) == count else None
        seconds = sum(trial["user_attrs"].get("seconds", 0) for trial in record["trials"]) + \
            (record["published_seconds"] or 0)
        settings = ", ".join(f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}"
                             for name, value in choice["params"].items()) if choice else ""
        lines.append(f"| {model} | {len(trials)} ({stopped}){f' + {beyond} not counted' if beyond else ''} | "
                     f"{'' if best is None else f'{best:.4f}'} | "
                     f"{'to run' if published is None else f'{published:.4f}'} | "
                     f"{choice['chosen'] if choice else 'searching'} | {settings} | {seconds / 3600:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    name = args.dataset.replace("-", "")
    json_path = args.json or os.path.join(ROOT, "benchmarks", f"tuned_{name}.json")
    history_path = args.history or os.path.join(ROOT, "benchmarks", f"tune_history_{name}.json")
    chosen, history = read_json(json_path), read_json(history_path)
    models = sorted(args.models, key=lambda model: model != "inttower")  # the preset's model first
    if args.report:
        print(report(models, history, chosen, args.trials))
        return
    os.makedirs(os.path.dirname(os.path.abspath(args.storage)), exist_ok=True)
    # a trial cut short stays RUNNING in the file until search() resumes it
    storage = optuna.storages.RDBStorage(f"sqlite:///{os.path.abspath(args.storage)}")
    lock = threading.Lock()  # both JSONs hold every model searched so far, rewritten whole

    def save(model):
        def save_study(study):
            with lock:
                history[model] = study_record(study)
                write_json(history_path, history)
        return save_study

    def tune_model(model):
        settings = search(args, storage, model, history.get(model), save(model))
        with lock:
            chosen[model] = settings
            write_json(json_path, chosen)
            print(f"{model}: valid AUC {settings['valid_auc']:.4f} with the {settings['chosen']} settings "
                  f"{' '.join(settings['flags'])}", flush=True)

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for done in [pool.submit(tune_model, model) for model in models]:
            done.result()


if __name__ == "__main__":
    main()
