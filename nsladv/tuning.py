"""Tune the regularization with keras-tuner, against a robust objective.

`HardeningHyperModel` searches the multiplier, the consistency distance, the
PGD steps and step size and the epsilon warm-up (and, with a graph, the graph
term's multiplier); its `fit` adds a callback
that measures white-box robust accuracy on the validation data once per epoch
(`val_robust_accuracy`) and a clean/robust trade-off (`val_tradeoff`). Any
keras-tuner tuner takes it unchanged:

```python
hypermodel = nsladv.tuning.HardeningHyperModel(build_base, epsilon=0.3, attack=nsladv.pgd(10, 1))
tuner = keras_tuner.RandomSearch(hypermodel, objective=nsladv.tuning.ROBUST_OBJECTIVE, max_trials=10)
tuner.search(train, validation_data=validation, epochs=5)
```
"""

import inspect
import time

import keras
import keras_tuner

from nsladv.attacks import BatchAttacker
from nsladv.attacks import pgd
from nsladv.configs import GraphRegularization
from nsladv.configs import Regularization
from nsladv.configs import ThreatModel
from nsladv.errors import SearchFailedError
from nsladv.errors import SettingsError
from nsladv.guards import StopOnNonFiniteLoss
from nsladv.schedules import EpsilonWarmup
from nsladv.wrapper import AdversarialModel

ROBUST_OBJECTIVE = keras_tuner.Objective("val_robust_accuracy", direction="max")
TRADEOFF_OBJECTIVE = keras_tuner.Objective("val_tradeoff", direction="max")


def default_search_space(hp):
    """The regularization and threat-model settings searched by default.

    Each is an ordinary keras-tuner hyperparameter: declare one with the same
    name in the `HyperParameters` you give the tuner (or fix it with
    `hp.Fixed`) to override it.
    """
    return {
        "multiplier": hp.Float("multiplier", 0.1, 4.0, sampling="log", default=1.0),
        "distance": hp.Choice("distance", ["label", "kl"], default="label"),
        "steps": hp.Choice("steps", [1, 3, 7], default=3),
        "step_fraction": hp.Float("step_fraction", 0.2, 1.25, default=0.5),
        "warmup_epochs": hp.Int("warmup_epochs", 0, 3, default=1),
    }


class RobustAccuracy(keras.callbacks.Callback):
    """Adds `val_clean_accuracy`, `val_robust_accuracy` and `val_tradeoff` to the epoch logs.

    The trade-off is `weight * clean + (1 - weight) * robust`, and with a
    `clean_floor`, `robust - (floor - clean)` below the floor.

    Args:
        data: batched validation `(x, y)` dataset.
        attack: the white-box `Attack`.
        epsilon: its radius.
        weight: the clean share of the trade-off, in [0, 1].
        clean_floor: the clean accuracy under which the trade-off drops.
        from_logits: whether the model outputs logits.
    """

    def __init__(self, data, *, attack, epsilon, weight=0.0, clean_floor=None, from_logits=True):
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"`weight` must be in [0, 1]. Received: weight={weight!r}")
        self.data = data
        self.attack = attack
        self.epsilon = epsilon
        self.weight = weight
        self.clean_floor = clean_floor
        self.from_logits = from_logits
        self._attacker = None

    def __deepcopy__(self, memo):
        # keras-tuner deep-copies callbacks per trial; the dataset is shared.
        return RobustAccuracy(
            self.data, attack=self.attack, epsilon=self.epsilon, weight=self.weight,
            clean_floor=self.clean_floor, from_logits=self.from_logits,
        )

    def on_epoch_end(self, epoch, logs=None):
        if self._attacker is None:
            target = getattr(self.model, "base_model", self.model)
            self._attacker = BatchAttacker(target, self.attack, from_logits=self.from_logits)
        clean, robust, _ = self._attacker.accuracy(self.data, self.epsilon)
        logs = logs if logs is not None else {}
        logs["val_clean_accuracy"] = clean
        logs["val_robust_accuracy"] = robust
        logs["val_tradeoff"] = tradeoff(clean, robust, weight=self.weight, clean_floor=self.clean_floor)


def tradeoff(clean, robust, *, weight=0.0, clean_floor=None):
    """The clean/robust trade-off objective (see `RobustAccuracy`)."""
    value = weight * clean + (1.0 - weight) * robust
    if clean_floor is not None and clean < clean_floor:
        value -= clean_floor - clean
    return value


class FailOnNonFiniteLoss(StopOnNonFiniteLoss):
    """Marks a diverging trial FAILED: keras-tuner would count it COMPLETED."""

    def __init__(self):
        super().__init__("this trial")

    def error(self, message):
        return keras_tuner.errors.FailedTrialError(f"{message} The trial is recorded as failed.")


class HardeningHyperModel(keras_tuner.HyperModel):
    """A keras-tuner HyperModel over nsladv's regularization and threat settings.

    Args:
        build_base: `hp -> keras.Model` (or a zero-argument callable) building
            a fresh base model returning logits. Give it or `base_model`.
        base_model: a fixed base model, cloned (fresh weights) per trial.
        epsilon: the training threat radius (L-inf unless `norm`).
        norm: the threat norm.
        clip_range: the valid input range.
        attack: the objective's white-box attack (default PGD-10, 1 restart).
        eval_epsilon: the objective's radius (default `epsilon`).
        tradeoff_weight: clean share of `val_tradeoff`.
        clean_floor: clean accuracy under which `val_tradeoff` drops.
        learning_rate: Adam's learning rate.
        search_space: `hp -> dict` of settings (default `default_search_space`).
        seed: every trial starts from this seed, so a trial's settings
            reproduce its result.
        graph: a `GraphRegularization` to add the graph term (the training
            data must then carry neighbors, e.g. `NeighborTable.dataset`); its
            multiplier is searched as `graph_multiplier` (log-uniform, 0.1 to
            10, the given one first) unless the search space fixes it.
    """

    def __init__(
        self,
        build_base=None,
        *,
        base_model=None,
        epsilon=0.3,
        norm="linf",
        clip_range=(0.0, 1.0),
        attack=None,
        eval_epsilon=None,
        tradeoff_weight=0.0,
        clean_floor=None,
        learning_rate=1e-3,
        search_space=default_search_space,
        seed=0,
        graph=None,
        name="nsladv_hardening",
        tunable=True,
    ):
        super().__init__(name=name, tunable=tunable)
        if (build_base is None) == (base_model is None):
            raise ValueError(
                "Give exactly one of `build_base` (a function building a fresh base model) or "
                f"`base_model`. Received: build_base={build_base!r}, base_model={base_model!r}"
            )
        self.build_base = build_base
        self.base_model = base_model
        self.epsilon = epsilon
        self.norm = norm
        self.clip_range = clip_range
        self.attack = attack or pgd(steps=10, restarts=1, norm=norm, clip_range=clip_range)
        self.eval_epsilon = epsilon if eval_epsilon is None else eval_epsilon
        self.tradeoff_weight = tradeoff_weight
        self.clean_floor = clean_floor
        self.learning_rate = learning_rate
        self.search_space = search_space
        self.seed = seed
        if graph is not None and not isinstance(graph, GraphRegularization):
            raise TypeError(f"`graph` must be a nsladv.GraphRegularization or None. Received: graph={graph!r}")
        self.graph = graph

    def settings(self, hp):
        """(ThreatModel, Regularization, warm-up epochs) for these hyperparameters."""
        space = self.search_space(hp)
        steps = space["steps"]
        threat = ThreatModel(
            epsilon=self.epsilon,
            norm=self.norm,
            steps=steps,
            step_size=space["step_fraction"] * self.epsilon if steps > 1 else None,
            clip_range=self.clip_range,
        )
        return threat, Regularization(multiplier=space["multiplier"], distance=space["distance"]), space["warmup_epochs"]

    def graph_settings(self, hp):
        """The `GraphRegularization` for these hyperparameters (None without a graph)."""
        if self.graph is None:
            return None
        if self.graph.multiplier == 0:
            return self.graph
        low, high = min(0.1, self.graph.multiplier), max(10.0, self.graph.multiplier)
        return self.graph.replace(
            multiplier=hp.Float("graph_multiplier", low, high, sampling="log", default=self.graph.multiplier)
        )

    def build(self, hp):
        keras.utils.set_random_seed(self.seed)
        threat, regularization, _ = self.settings(hp)
        base = self._fresh_base(hp)
        model = AdversarialModel(base, threat=threat, regularization=regularization, graph=self.graph_settings(hp))
        model.compile(
            optimizer=keras.optimizers.Adam(self.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return model

    def _fresh_base(self, hp):
        if self.base_model is not None:
            return keras.models.clone_model(self.base_model)
        # A builder may take the hyperparameters or nothing; a TypeError raised
        # inside it must not be mistaken for the wrong arity.
        if inspect.signature(self.build_base).parameters:
            return self.build_base(hp)
        return self.build_base()

    def fit(self, hp, model, *args, validation_data=None, callbacks=None, **kwargs):
        if validation_data is None:
            raise ValueError(
                "The robust objective is measured on validation data: pass "
                "validation_data= to search(). Received: validation_data=None"
            )
        _, _, warmup = self.settings(hp)
        callbacks = list(callbacks or []) + [
            EpsilonWarmup(warmup),
            RobustAccuracy(
                validation_data, attack=self.attack, epsilon=self.eval_epsilon,
                weight=self.tradeoff_weight, clean_floor=self.clean_floor,
            ),
            FailOnNonFiniteLoss(),
        ]
        # The robust objective must be in the logs before keras-tuner's
        # checkpoint callback reads them.
        callbacks.sort(key=lambda c: not isinstance(c, (EpsilonWarmup, RobustAccuracy, FailOnNonFiniteLoss)))
        keras.utils.set_random_seed(self.seed)
        start = time.perf_counter()
        history = model.fit(*args, validation_data=validation_data, callbacks=callbacks, **kwargs)
        # Recorded at every epoch so that keras-tuner keeps it with the best one.
        seconds = round(time.perf_counter() - start, 1)
        history.history["trial_seconds"] = [seconds] * len(history.epoch)
        return history


def results_table(tuner, num_trials=None):
    """A plain-text table of the trials: settings, clean and robust accuracy, status."""
    trials = sorted(tuner.oracle.trials.values(), key=lambda t: int(t.trial_id))
    if num_trials:
        trials = trials[:num_trials]
    names = ["multiplier", "distance", "steps", "step_fraction", "warmup_epochs"]
    if any("graph_multiplier" in t.hyperparameters.values for t in trials):
        names.append("graph_multiplier")
    header = f"{'trial':>5} {'status':<10} " + " ".join(f"{n:>13}" for n in names) + f" {'val_clean':>9} {'val_robust':>10} {'seconds':>8}"
    lines = [header, "-" * len(header)]
    for trial in trials:
        values = trial.hyperparameters.values
        cells = " ".join(f"{_fmt(values.get(n)):>13}" for n in names)
        clean = _metric(trial, "val_clean_accuracy")
        robust = _metric(trial, "val_robust_accuracy")
        seconds = _metric(trial, "trial_seconds")
        lines.append(
            f"{trial.trial_id:>5} {trial.status:<10} {cells} {_pct(clean):>9} {_pct(robust):>10} {_fmt(seconds):>8}"
        )
    return "\n".join(lines)


def _metric(trial, name):
    return trial.metrics.get_last_value(name) if trial.metrics.exists(name) else None


def _pct(value):
    return "-" if value is None else f"{100 * value:.1f}%"


def _fmt(value):
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


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
    verbose=1,
    log=print,
):
    """Searches a pipeline's regularization for robustness, then exports the best trial.

    The best trial's model is reused (keras-tuner keeps its best epoch's
    weights), evaluated white-box on the test split with the pipeline's
    attacks, and exported through the normal export path with the tuning
    results in its metadata. An interrupted search resumes where it stopped
    (finished trials are not rerun) unless `overwrite`.

    Returns:
        A report dict, also written to `out_dir/tuning_report.json`.
    """
    import pathlib  # noqa: PLC0415

    from nsladv import hardening  # noqa: PLC0415
    from nsladv import report as report_lib  # noqa: PLC0415
    from nsladv.evaluation import evaluate_robustness  # noqa: PLC0415

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
    data = hardening.pipeline_data(
        pipeline, data_dir=data_dir, eval_examples=eval_examples,
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
        learning_rate=pipeline.learning_rate,
        seed=pipeline.seed,
        graph=None if pipeline.graph is None else pipeline.graph.regularization,
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
    log(f"tuning {pipeline.name}: {tuner} search, objective {search_objective.name}, "
        f"{'up to ' + str(epochs) + ' epochs a trial' if tuner == 'hyperband' else str(trials) + ' trials of ' + str(epochs) + ' epochs'}")
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
        best.base_model, test, epsilons=pipeline.eval_epsilons, attacks=pipeline.eval_attacks,
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
                "val_clean_accuracy": _metric(t, "val_clean_accuracy"),
                "val_robust_accuracy": _metric(t, "val_robust_accuracy"),
                "seconds": _metric(t, "trial_seconds"),
            }
            for t in sorted(search.oracle.trials.values(), key=lambda t: int(t.trial_id))
        ],
    }
    report = {
        "pipeline": pipeline.get_config(),
        "versions": report_lib.package_versions(),
        "tuning": tuning,
        "evaluation": evaluation,
    }
    if export:
        path = hardening.export_for_serving(
            best.base_model,
            pipeline,
            data,
            saved_models=saved_models,
            metadata={
                "threat": threat.get_config(),
                "regularization": regularization.get_config(),
                "graph": None if hypermodel.graph is None else hypermodel.graph_settings(best_trial.hyperparameters).get_config(),
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
