"""Tune the regularization with keras-tuner, against a robust objective.

`HardeningHyperModel` searches the multiplier, the consistency distance, the
PGD steps and step size and the epsilon warm-up (and, with a graph, the graph
term's multiplier); its `fit` adds a callback
that measures white-box robust accuracy on the validation data once per epoch
(`val_robust_accuracy`) and a clean/robust trade-off (`val_tradeoff`). With an
optimizer that averages the weights (`use_ema=True`), the objective, the
validation metrics and keras-tuner's best-epoch checkpoint are all of the
average. Any keras-tuner tuner takes it unchanged:

```python
hypermodel = nsladv.tuning.HardeningHyperModel(build_base, epsilon=0.3, attack=nsladv.pgd(10, 1))
tuner = keras_tuner.RandomSearch(hypermodel, objective=nsladv.tuning.ROBUST_OBJECTIVE, max_trials=10)
tuner.search(train, validation_data=validation, epochs=5)
```
"""

import hashlib
import inspect
import json
import pathlib
import time

import keras
import tensorflow as tf

from nsladv import datasets
from nsladv import precision
from nsladv._extras import require
from nsladv.configs import GraphRegularization
from nsladv.configs import Regularization
from nsladv.configs import ThreatModel
from nsladv.errors import SettingsError
from nsladv.guards import RobustnessMonitor
from nsladv.guards import StopOnNonFiniteLoss
from nsladv.guards import keeps_weight_average
from nsladv.robustness.attacks import pgd
from nsladv.schedules import EpsilonWarmup
from nsladv.schedules import MultiplierWarmup
from nsladv.settings_checks import integer
from nsladv.settings_checks import number
from nsladv.wrapper import AdversarialModel

keras_tuner = require("keras_tuner", "tune")
hparams_api = require("tensorboard.plugins.hparams.api", "tune")

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
        "relative_step_size": hp.Float("relative_step_size", 0.2, 1.25, default=0.5),
        "warmup_epochs": hp.Int("warmup_epochs", 0, 3, default=1),
    }


class RobustAccuracy(RobustnessMonitor):
    """The trial's robustness monitor: `RobustnessMonitor`'s reading after every epoch, as the search's objective.

    It attacks the same fixed validation examples after every epoch (the
    same random starts too), stops a trial whose robust accuracy collapses
    (catastrophic overfitting), and adds `val_clean_accuracy`,
    `val_robust_accuracy` and `val_tradeoff` to the epoch logs. The
    trade-off is `weight * clean + (1 - weight) * robust`, and with a
    `clean_floor`, `robust - (floor - clean)` below the floor. keras-tuner
    keeps each trial's best epoch by this objective, so the monitor itself
    restores nothing.

    Args:
        model: the base model to attack (an `AdversarialModel`'s `base_model`).
        x, y: the validation examples.
        attack: the white-box `Attack`.
        epsilon: its radius.
        weight: the clean share of the trade-off, in [0, 1].
        clean_floor: the clean accuracy under which the trade-off drops.
        **kwargs: `RobustnessMonitor`'s (`from_logits`, `collapse_drop`,
            `seed`, `measured_model`, `log`).
    """

    def __init__(self, model, x, y, *, attack, epsilon, weight=0.0, clean_floor=None, **kwargs):
        if not 0.0 <= weight <= 1.0:
            raise SettingsError(f"`weight` must be in [0, 1]. Received: weight={weight!r}")
        super().__init__(model, x, y, epsilon=epsilon, attack=attack, restore_best=False, **kwargs)
        self.weight = weight
        self.clean_floor = clean_floor

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        reading = self.history[-1]
        clean, robust = reading["clean_accuracy"], reading["robust_accuracy"]
        if logs is not None:
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


def trial_name(hp):
    """A short stable name of a trial's hyperparameter values (its TensorBoard folder)."""
    text = json.dumps(hp.values, sort_keys=True, default=str)
    return "trial_" + hashlib.sha256(text.encode()).hexdigest()[:10]


class TrialHParams(keras.callbacks.Callback):
    """Writes a trial's hyperparameters for TensorBoard's HParams view, beside its epoch logs.

    keras-tuner writes HParams only under Keras 2; this does what its
    TensorBoard support did: one `hparams` summary per trial folder, whose
    metrics (validation robust and clean accuracy) the Keras TensorBoard
    callback writes every epoch.
    """

    METRICS = ("epoch_robust_accuracy", "epoch_clean_accuracy", "epoch_tradeoff")

    def __init__(self, folder, hp):
        super().__init__()
        self.folder = folder
        self.values = {k: v for k, v in hp.values.items() if isinstance(v, (bool, int, float, str))}

    def on_train_begin(self, logs=None):
        with tf.summary.create_file_writer(self.folder).as_default():
            hparams_api.hparams_config(
                hparams=[hparams_api.HParam(name) for name in self.values],
                metrics=[hparams_api.Metric(tag, group="validation") for tag in self.METRICS],
            )
            hparams_api.hparams(self.values, trial_id=pathlib.Path(self.folder).name)


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
        learning_rate: Adam's learning rate (default 1e-3), when no `optimizer`
            is given.
        optimizer: the trials' optimizer: a Keras optimizer, its name or its
            config; each trial compiles a fresh copy (the same settings,
            schedule included, and new state). If it averages the weights
            (`use_ema=True`), each trial is measured and checkpointed on the
            average (`keras.callbacks.SwapEMAWeights(swap_on_epoch=True)`),
            which is also what its model ends with. Default: Adam at
            `learning_rate`.
        search_space: `hp -> dict` of settings (default `default_search_space`).
        seed: every trial starts from this seed, so a trial's settings
            reproduce its result.
        graph: a `GraphRegularization` to add the graph term (the training
            data must then carry neighbors, e.g. `NeighborTable.dataset`); its
            multiplier is searched as `graph_multiplier` (log-uniform, 0.1 to
            10, the given one first) unless the search space fixes it.
        tensorboard_dir: a folder for TensorBoard: each trial's epoch logs
            and hyperparameters go to a subfolder, for the HParams view
            (keras-tuner writes none with Keras 3).
        multiplier_warmup_epochs: epochs over which the multiplier ramps up
            (`MultiplierWarmup`), as in `nsladv harden`.
        monitor_examples: how many validation examples, spread evenly over
            the validation data, the objective attacks after every epoch
            (default: all of them).
        collapse_drop: the fall in robust accuracy from a trial's best epoch
            at which the trial stops (catastrophic overfitting; see
            `RobustnessMonitor`).
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
        learning_rate=None,
        optimizer=None,
        search_space=default_search_space,
        seed=0,
        graph=None,
        tensorboard_dir=None,
        multiplier_warmup_epochs=0,
        monitor_examples=None,
        collapse_drop=0.3,
        name="nsladv_hardening",
        tunable=True,
    ):
        super().__init__(name=name, tunable=tunable)
        if (build_base is None) == (base_model is None):
            raise SettingsError(
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
        if optimizer is not None and learning_rate is not None:
            raise SettingsError(
                "Give `learning_rate` (for the default Adam) or `optimizer`, not both. "
                f"Received: learning_rate={learning_rate!r}, optimizer={optimizer!r}"
            )
        self.learning_rate = 1e-3 if learning_rate is None and optimizer is None else learning_rate
        self.optimizer = None if optimizer is None else _optimizer_config(optimizer)
        self.search_space = search_space
        self.seed = seed
        if graph is not None and not isinstance(graph, GraphRegularization):
            raise TypeError(f"`graph` must be a nsladv.GraphRegularization or None. Received: graph={graph!r}")
        self.graph = graph
        self.tensorboard_dir = tensorboard_dir
        self.multiplier_warmup_epochs = number(
            "multiplier_warmup_epochs", multiplier_warmup_epochs, finite=False, error=SettingsError
        )
        self.monitor_examples = integer("monitor_examples", monitor_examples, optional=True, error=SettingsError)
        self.collapse_drop = collapse_drop
        self._monitored = None  # (validation data, its monitored images, labels)

    def settings(self, hp):
        """(ThreatModel, Regularization, warm-up epochs) for these hyperparameters."""
        space = self.search_space(hp)
        steps = space["steps"]
        threat = ThreatModel(
            epsilon=self.epsilon,
            norm=self.norm,
            steps=steps,
            step_size=space["relative_step_size"] * self.epsilon if steps > 1 else None,
            clip_range=self.clip_range,
        )
        return (
            threat,
            Regularization(multiplier=space["multiplier"], distance=space["distance"]),
            space["warmup_epochs"],
        )

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
            optimizer=keras.optimizers.Adam(self.learning_rate)
            if self.optimizer is None
            else keras.optimizers.deserialize(self.optimizer),
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
            raise SettingsError(
                "The robust objective is measured on validation data: pass "
                "validation_data= to search(). Received: validation_data=None"
            )
        _, _, warmup = self.settings(hp)
        callbacks = list(callbacks or [])
        if keeps_weight_average(model.optimizer) and not any(
            isinstance(c, keras.callbacks.SwapEMAWeights) for c in callbacks
        ):
            # The average is in the model from each epoch's end to the next epoch's start: the objective and
            # keras-tuner's checkpoint after it see it, training goes on from the raw weights.
            callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
        x, y = self._monitored_examples(validation_data)
        base = model.base_model
        measured, _ = precision.measurable(base)  # every trial measured in float32, as the evaluation will be
        callbacks += [
            EpsilonWarmup(warmup),
            MultiplierWarmup(self.multiplier_warmup_epochs),
            RobustAccuracy(
                base,
                x,
                y,
                attack=self.attack,
                epsilon=self.eval_epsilon,
                weight=self.tradeoff_weight,
                clean_floor=self.clean_floor,
                collapse_drop=self.collapse_drop,
                seed=self.seed,
                measured_model=None if measured is base else measured,
            ),
            FailOnNonFiniteLoss(),
        ]
        if self.tensorboard_dir is not None:
            folder = str(pathlib.Path(self.tensorboard_dir) / trial_name(hp))
            callbacks += [keras.callbacks.TensorBoard(folder), TrialHParams(folder, hp)]
        # The robust objective must be in the logs before keras-tuner's
        # checkpoint callback reads them, and of the average if there is one.
        callbacks.sort(key=lambda c: not isinstance(c, _FIRST_CALLBACKS))
        keras.utils.set_random_seed(self.seed)
        start = time.perf_counter()
        history = model.fit(*args, validation_data=validation_data, callbacks=callbacks, **kwargs)
        # Recorded at every epoch so that keras-tuner keeps it with the best one.
        seconds = round(time.perf_counter() - start, 1)
        history.history["trial_seconds"] = [seconds] * len(history.epoch)
        return history

    def _monitored_examples(self, validation_data):
        """The validation examples the objective attacks: read once, the same for every trial."""
        if self._monitored is None or self._monitored[0] is not validation_data:
            x, y = datasets.as_arrays(validation_data.unbatch())
            rows = datasets.spread_rows(len(y), self.monitor_examples)
            self._monitored = (validation_data, x[rows], y[rows])
        return self._monitored[1:]


_FIRST_CALLBACKS = (
    keras.callbacks.SwapEMAWeights,
    EpsilonWarmup,
    MultiplierWarmup,
    RobustAccuracy,
    FailOnNonFiniteLoss,
)


def _optimizer_config(optimizer):
    """The serialized config of a Keras optimizer given as an instance, a name or a config."""
    try:
        return keras.optimizers.serialize(keras.optimizers.get(optimizer))
    except (ValueError, TypeError) as error:
        raise SettingsError(
            "`optimizer` must be a Keras optimizer, its name or its config. "
            f"Received: optimizer={optimizer!r} ({error})"
        ) from None


def results_table(tuner, num_trials=None):
    """A plain-text table of the trials: their hyperparameters, clean and robust accuracy, status.

    The columns are the hyperparameters the trials have, in the order the
    search space declared them, whatever that space is.
    """
    trials = sorted(tuner.oracle.trials.values(), key=lambda t: int(t.trial_id))
    if num_trials:
        trials = trials[:num_trials]
    names = []
    for trial in trials:
        names += [hp.name for hp in trial.hyperparameters.space if hp.name not in names]
    width = max([13, *(len(n) for n in names)])
    header = (
        f"{'trial':>5} {'status':<10} "
        + " ".join(f"{n:>{width}}" for n in names)
        + f" {'val_clean':>9} {'val_robust':>10} {'seconds':>8}"
    )
    lines = [header, "-" * len(header)]
    for trial in trials:
        values = trial.hyperparameters.values
        cells = " ".join(f"{_fmt(values.get(n)):>{width}}" for n in names)
        clean = metric(trial, "val_clean_accuracy")
        robust = metric(trial, "val_robust_accuracy")
        seconds = metric(trial, "trial_seconds")
        lines.append(
            f"{trial.trial_id:>5} {trial.status:<10} {cells} {_pct(clean):>9} {_pct(robust):>10} {_fmt(seconds):>8}"
        )
    return "\n".join(lines)


def metric(trial, name):
    """A trial's last value of a metric, or None."""
    return trial.metrics.get_last_value(name) if trial.metrics.exists(name) else None


def _pct(value):
    return "-" if value is None else f"{100 * value:.1f}%"


def _fmt(value):
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)
