"""The tune job: search a pipeline's regularization for robustness with keras-tuner, then export the best trial.

Built from the harden job's phases: the same data, precision choice, warm-ups
and robustness monitor (here the search's objective), a run folder whose
finished phases a rerun reuses, the same evaluation and export.
"""

import pathlib

from nsladv import precision as precision_lib
from nsladv._extras import require
from nsladv.errors import SearchFailedError
from nsladv.errors import SettingsError
from nsladv.jobs import report as report_lib
from nsladv.jobs import run_state
from nsladv.jobs import user_models
from nsladv.jobs.assembly import describe_data
from nsladv.jobs.assembly import evaluation_phase
from nsladv.jobs.assembly import export_phase
from nsladv.jobs.assembly import pipeline_data
from nsladv.jobs.harden import EVALUATION_SETTINGS
from nsladv.tuning import ROBUST_OBJECTIVE
from nsladv.tuning import TRADEOFF_OBJECTIVE
from nsladv.tuning import HardeningHyperModel
from nsladv.tuning import metric
from nsladv.tuning import results_table

keras_tuner = require("keras_tuner", "tune")

TUNERS = {
    "random": keras_tuner.RandomSearch,
    "bayesian": keras_tuner.BayesianOptimization,
    "hyperband": keras_tuner.Hyperband,
}
OBJECTIVES = {"robust": ROBUST_OBJECTIVE, "tradeoff": TRADEOFF_OBJECTIVE}


def tune_pipeline(
    pipeline=None,
    *,
    trials=6,
    epochs=3,
    tuner="random",
    objective="robust",
    tradeoff_weight=0.5,
    clean_floor=None,
    out_dir=None,
    overwrite=False,
    data_dir=None,
    saved_models="saved_models",
    eval_examples=None,
    export=True,
    precision="auto",
    overrides=None,
    verbose=1,
    log=print,
):
    """Searches a pipeline's regularization for robustness, then evaluates and exports the best trial.

    Trials train as `nsladv harden` does: with the pipeline's optimizer (its
    learning-rate schedule over `epochs`, its weights' average), its epsilon
    and multiplier warm-ups, in the precision chosen for the hardware. After
    every epoch a robustness monitor attacks the pipeline's
    `monitor_examples` validation digits with PGD-10 in float32, as harden's
    does: its reading is the objective, keras-tuner keeps each trial's best
    epoch by it, and a collapsing trial stops. The best trial's model is
    then evaluated white-box on the test split with the pipeline's attacks
    and exported with the tuning results in its metadata.

    The phases are kept in `out_dir`: a rerun resumes the search (finished
    trials are not rerun) and reuses the evaluation and export. Other search
    or training settings stop with a `RunExistsError` unless `overwrite`.

    Returns:
        A report dict, also written to `out_dir/tuning_report.json`.

    Raises:
        SettingsError: an unknown tuner or objective, or settings that do not fit.
        SearchFailedError: no trial completed.
        RunExistsError: `out_dir` holds a search made with other settings.
    """
    pipeline = _checked_pipeline(pipeline, tuner, objective, eval_examples)
    chosen = precision_lib.choose(precision)
    search_settings = {
        "tuner": tuner,
        "objective": objective,
        "trials": None if tuner == "hyperband" else trials,
        "epochs": epochs,
        "tradeoff_weight": tradeoff_weight if objective == "tradeoff" else None,
        "clean_floor": clean_floor,
    }
    out_dir = pathlib.Path(out_dir or pathlib.Path("runs") / pipeline.name / "tuning")
    settings = pipeline.get_config()
    state = run_state.RunState(
        out_dir,
        training={
            **{k: v for k, v in settings.items() if k not in EVALUATION_SETTINGS},
            "search": search_settings,
            "precision": chosen.name,
        },
        evaluation={k: settings[k] for k in EVALUATION_SETTINGS},
        overwrite=overwrite,
        overwrite_hint="--overwrite (overwrite=True in Python)",
    )
    if state.discarded:
        log(f"--overwrite: the earlier search in {out_dir} was replaced")
    log(f"precision: {chosen.name} ({chosen.reason})")
    with precision_lib.policy_scope(chosen):
        data = pipeline_data(pipeline, data_dir=data_dir, eval_examples=pipeline.eval_examples)
        for line in describe_data(data):
            log(line)
        hypermodel = _hypermodel(pipeline, data, epochs, objective, tradeoff_weight, clean_floor, out_dir)
        search, best_trial = _search(hypermodel, data, state, pipeline, search_settings, out_dir, verbose, log)
        best, evaluated_in = precision_lib.measurable(search.get_best_models(1)[0].base_model)
    log(f"best trial {best_trial.trial_id}: {best_trial.hyperparameters.values}")
    tuning = _tuning_record(search, best_trial, search_settings, hypermodel, pipeline)
    evaluation, seconds = evaluation_phase(
        state,
        "tuned",
        best,
        pipeline,
        data,
        announce=lambda text: log(f"[2/3] {text}"),
        progress=lambda *result: log(report_lib.progress_line(*result)),
    )
    report = {
        "pipeline": pipeline.get_config(),
        "overrides": dict(overrides or {}),
        "versions": report_lib.package_versions(),
        "precision": {**chosen.to_dict(), "evaluation_and_export": evaluated_in},
        "tuning": tuning,
        "evaluation": evaluation,
        "timings": {"evaluate_tuned_seconds": seconds},
    }
    if export:
        report["export"] = str(
            _export(state, best, best_trial, hypermodel, pipeline, data, evaluation, tuning, saved_models, log)
        )
    report_lib.write_json(out_dir / "tuning_report.json", report)
    log(report_lib.summary_table({"tuned": evaluation}))
    return report


def _checked_pipeline(pipeline, tuner, objective, eval_examples):
    """The pipeline to tune (a name, file or `Pipeline`), once the search's settings are checked against it."""
    pipeline = user_models.pipeline_of(pipeline)
    if tuner not in TUNERS:
        raise SettingsError(f"Unknown tuner. Expected one of {sorted(TUNERS)}. Received: tuner={tuner!r}")
    if objective not in OBJECTIVES:
        raise SettingsError(
            f"Unknown objective. Expected one of {sorted(OBJECTIVES)}. Received: objective={objective!r}"
        )
    if not isinstance(pipeline.threat.epsilon, float):
        raise SettingsError(
            "Tuning needs a single epsilon in the pipeline's threat model. "
            f"Received: epsilon={dict(pipeline.threat.epsilon)!r}"
        )
    if eval_examples is not None:
        pipeline = pipeline.replace(eval_examples=eval_examples)  # recorded in the report, as harden does
    if not pipeline.validation_fraction:
        # The objective is measured on validation digits, never on the test split.
        pipeline = pipeline.replace(validation_fraction=0.1)
    return pipeline


def _search(hypermodel, data, state, pipeline, settings, out_dir, verbose, log):
    """Runs the keras-tuner search `settings` describe (a rerun resumes it: finished trials are kept); returns it and
    its best trial."""
    tuner, objective, trials, epochs = (settings[k] for k in ("tuner", "objective", "trials", "epochs"))
    search = TUNERS[tuner](
        hypermodel,
        objective=OBJECTIVES[objective],
        directory=str(out_dir),
        project_name="search",
        overwrite=bool(state.discarded),
        seed=pipeline.seed,
        **({"max_epochs": epochs} if tuner == "hyperband" else {"max_trials": trials}),
    )
    state.begin()
    budget = f"up to {epochs} epochs a trial" if tuner == "hyperband" else f"{trials} trials of {epochs} epochs"
    log(f"[1/3] tuning {pipeline.name}: {tuner} search, objective {OBJECTIVES[objective].name}, {budget}")
    search.search(
        data.train,
        validation_data=data.validation,
        verbose=verbose,
        shuffle=False,  # The pipeline shuffles.
        **({} if tuner == "hyperband" else {"epochs": epochs}),
    )
    log("\n" + results_table(search))
    if not any(t.status == "COMPLETED" for t in search.oracle.trials.values()):
        raise SearchFailedError(f"No trial completed; see {out_dir / 'search'} for the failed trials.")
    return search, search.oracle.get_best_trials(1)[0]


def _hypermodel(pipeline, data, epochs, objective, tradeoff_weight, clean_floor, out_dir):
    """The search's HyperModel, with harden's optimizer, warm-ups and monitor."""
    splits = data.splits
    return HardeningHyperModel(
        lambda: pipeline.build_model(splits.image_shape, splits.num_classes),
        epsilon=pipeline.threat.epsilon,
        norm=pipeline.threat.norm,
        clip_range=pipeline.threat.clip_range,
        tradeoff_weight=tradeoff_weight if objective == "tradeoff" else 0.0,
        clean_floor=clean_floor,
        # The recipe's optimizer (its schedule over a trial's epochs, its weight average), fresh for each trial.
        optimizer=pipeline.optimizer(int(data.train.cardinality()), epochs),
        seed=pipeline.seed,
        graph=None if pipeline.graph is None else pipeline.graph.regularization,
        tensorboard_dir=out_dir / "logs",
        multiplier_warmup_epochs=pipeline.multiplier_warmup_epochs,
        monitor_examples=pipeline.monitor_examples or None,
    )


def _tuning_record(search, best_trial, search_settings, hypermodel, pipeline):
    trials = sorted(search.oracle.trials.values(), key=lambda t: int(t.trial_id))
    return {
        **search_settings,
        "objective": search.oracle.objective.name,
        "monitor": {
            "attack": hypermodel.attack.get_config(),
            "epsilon": hypermodel.eval_epsilon,
            "examples": pipeline.monitor_examples or "all",
            "split": "validation",
        },
        "best_trial": best_trial.trial_id,
        "best_hyperparameters": best_trial.hyperparameters.values,
        "best_score": best_trial.score,
        "trials": [
            {
                "trial": t.trial_id,
                "status": t.status,
                "hyperparameters": t.hyperparameters.values,
                "val_clean_accuracy": metric(t, "val_clean_accuracy"),
                "val_robust_accuracy": metric(t, "val_robust_accuracy"),
                "seconds": metric(t, "trial_seconds"),
            }
            for t in trials
        ],
    }


def _export(state, model, best_trial, hypermodel, pipeline, data, evaluation, tuning, saved_models, log):
    """The best trial's TF Serving version, with its settings and search in the export's metadata."""
    threat, regularization, warmup = hypermodel.settings(best_trial.hyperparameters)
    graph = hypermodel.graph_settings(best_trial.hyperparameters)
    return export_phase(
        state,
        model,
        pipeline,
        data,
        what="the best trial",
        saved_models=saved_models,
        metadata={
            "threat": threat.get_config(),
            "regularization": regularization.get_config(),
            "graph": None if graph is None else graph.get_config(),
            "epsilon_warmup_epochs": warmup,
            "robustness": evaluation,
            "tuning": tuning,
        },
        announce=lambda text: log(f"[3/3] {text}"),
        log=log,
    )
