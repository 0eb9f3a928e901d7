"""The tune job: search a pipeline's regularization for robustness with keras-tuner, then export the best trial."""

import pathlib

from nsladv._extras import require
from nsladv.errors import SearchFailedError
from nsladv.errors import SettingsError
from nsladv.jobs import report as report_lib
from nsladv.jobs.assembly import export_for_serving
from nsladv.jobs.assembly import pipeline_data
from nsladv.robustness.evaluation import evaluate_robustness
from nsladv.robustness.sets import fit_attacks
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


def tune_pipeline(
    pipeline,
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
    overrides=None,
    verbose=1,
    log=print,
):
    """Searches a pipeline's regularization for robustness, then exports the best trial.

    Trials train as `nsladv harden` does: with the pipeline's optimizer
    (`Pipeline.optimizer`: its learning-rate schedule over `epochs`, its
    weights' average, on which trials are then measured and kept). The best
    trial's model is reused (keras-tuner keeps its best epoch's
    weights), evaluated white-box on the test split with the pipeline's
    attacks, and exported through the normal export path with the tuning
    results in its metadata. An interrupted search resumes where it stopped
    (finished trials are not rerun) unless `overwrite`.

    Returns:
        A report dict, also written to `out_dir/tuning_report.json`.
    """
    if tuner not in TUNERS:
        raise ValueError(f"Unknown tuner. Expected one of {sorted(TUNERS)}. Received: tuner={tuner!r}")
    if objective not in ("robust", "tradeoff"):
        raise ValueError(f"`objective` must be 'robust' or 'tradeoff'. Received: objective={objective!r}")
    if not isinstance(pipeline.threat.epsilon, float):
        raise SettingsError(
            "Tuning needs a single epsilon in the pipeline's threat model. "
            f"Received: epsilon={dict(pipeline.threat.epsilon)!r}"
        )
    out_dir = pathlib.Path(out_dir or pathlib.Path("runs") / pipeline.name / "tuning")
    data = pipeline_data(
        pipeline,
        data_dir=data_dir,
        eval_examples=pipeline.eval_examples if eval_examples is None else eval_examples,
        validation_fraction=pipeline.validation_fraction or 0.1,
    )
    splits, train, validation, test = data.splits, data.train, data.validation, data.test

    hypermodel = HardeningHyperModel(
        lambda: pipeline.build_model(splits.image_shape, splits.num_classes),
        epsilon=pipeline.threat.epsilon,
        norm=pipeline.threat.norm,
        clip_range=pipeline.threat.clip_range,
        tradeoff_weight=tradeoff_weight if objective == "tradeoff" else 0.0,
        clean_floor=clean_floor,
        # The recipe's optimizer (its schedule over a trial's epochs, its weight average), fresh for each trial.
        optimizer=pipeline.optimizer(int(train.cardinality()), epochs),
        seed=pipeline.seed,
        graph=None if pipeline.graph is None else pipeline.graph.regularization,
        tensorboard_dir=out_dir / "logs",
    )
    search_objective = ROBUST_OBJECTIVE if objective == "robust" else TRADEOFF_OBJECTIVE
    kwargs = {"max_epochs": epochs} if tuner == "hyperband" else {"max_trials": trials}
    search = TUNERS[tuner](
        hypermodel,
        objective=search_objective,
        directory=str(out_dir),
        project_name="search",
        overwrite=overwrite,
        seed=pipeline.seed,
        **kwargs,
    )
    budget = f"up to {epochs} epochs a trial" if tuner == "hyperband" else f"{trials} trials of {epochs} epochs"
    log(f"tuning {pipeline.name}: {tuner} search, objective {search_objective.name}, {budget}")
    search_kwargs = {} if tuner == "hyperband" else {"epochs": epochs}
    search.search(train, validation_data=validation, verbose=verbose, shuffle=False, **search_kwargs)
    table = results_table(search)
    log("\n" + table)
    completed = [t for t in search.oracle.trials.values() if t.status == "COMPLETED"]
    if not completed:
        raise SearchFailedError(f"No trial completed; see {out_dir / 'search'} for the failed trials.")
    best_trial = search.oracle.get_best_trials(1)[0]
    best = search.get_best_models(1)[0]
    threat, regularization, warmup = hypermodel.settings(best_trial.hyperparameters)
    log(f"best trial {best_trial.trial_id}: {best_trial.hyperparameters.values}")
    evaluation = evaluate_robustness(
        best.base_model,
        test,
        epsilons=pipeline.eval_epsilons,
        attacks=fit_attacks(pipeline.eval_attacks, clip_range=pipeline.input_range, num_classes=splits.num_classes),
        large_epsilon=pipeline.large_epsilon,
    )
    tuning = {
        "tuner": tuner,
        "objective": search_objective.name,
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
            for t in sorted(search.oracle.trials.values(), key=lambda t: int(t.trial_id))
        ],
    }
    report = {
        "pipeline": pipeline.get_config(),
        "overrides": dict(overrides or {}),
        "versions": report_lib.package_versions(),
        "tuning": tuning,
        "evaluation": evaluation,
    }
    if export:
        path = export_for_serving(
            best.base_model,
            pipeline,
            data,
            saved_models=saved_models,
            metadata={
                "threat": threat.get_config(),
                "regularization": regularization.get_config(),
                "graph": None
                if hypermodel.graph is None
                else hypermodel.graph_settings(best_trial.hyperparameters).get_config(),
                "epsilon_warmup_epochs": warmup,
                "robustness": evaluation,
                "tuning": tuning,
            },
        )
        report["export"] = str(path)
        log(f"exported the best trial for TF Serving: {path}")
    report_lib.write_json(out_dir / "tuning_report.json", report)
    log(report_lib.summary_table({"tuned": evaluation}))
    return report
