"""The main job: data -> hardened model -> honest robustness report -> TF Serving export."""

import pathlib

import keras
import numpy as np

from nsladv import distribute
from nsladv import precision as precision_lib
from nsladv.classifier import check_classifier
from nsladv.classifier import declared_channels
from nsladv.errors import SettingsError
from nsladv.jobs import console
from nsladv.jobs import estimate
from nsladv.jobs import report as report_lib
from nsladv.jobs import run_state
from nsladv.jobs import training
from nsladv.jobs import user_models
from nsladv.jobs.assembly import describe_data
from nsladv.jobs.assembly import evaluation_phase
from nsladv.jobs.assembly import export_phase
from nsladv.jobs.assembly import pipeline_data
from nsladv.jobs.model_card import write_run_files


def harden(
    pipeline=None,
    *,
    model=None,
    data=None,
    name=None,
    model_path=None,
    out_dir=None,
    overwrite=False,
    saved_models="saved_models",
    data_dir=None,
    epochs=None,
    baseline=True,
    eval_examples=None,
    export=True,
    strategy=None,
    precision="auto",
    callbacks=(),
    overrides=None,
    verbose=1,
    log=print,
    step_progress=None,
):
    """Runs a hardening job end to end (train, evaluate, report, export) and returns its report.

    The phases run in order: train the hardened model (and, for a graph
    pipeline, the same model without the graph term), train the undefended
    baseline, evaluate each, write the report, export. Each finished phase is
    kept in `out_dir`, and a training is backed up every epoch, so the same
    call after a kill picks up at the first unfinished phase. Changed
    evaluation settings keep the trained models; changed training settings
    stop with a `RunExistsError` unless `overwrite`.

    Example, on data and a model already in memory:

    >>> report = nsladv.harden(model=my_model, data=(x, y), name="digits", epochs=2)
    >>> report["evaluations"]["hardened"]["worst_case"]

    Args:
        pipeline: an `nsladv.Pipeline`, a bundled pipeline's name or a
            pipeline file's path (default: the default recipe, `mnist`).
        model: the model to harden instead of the pipeline's `build_model`:
            a `keras.Model` (trained in place for the hardened model; the
            baseline trains a clone) or a saved `.keras` file. It must take
            the data's images and output one score per class.
        data: the data instead of the pipeline's dataset: any source
            `nsladv.datasets.resolve` reads (a TFDS name, an image folder,
            a `.npz`, arrays `(x, y)`, a `tf.data.Dataset`).
        name: the export and run name (default: the model file's stem, or
            the pipeline's name).
        model_path: the same as a file `model` (kept for earlier callers).
        out_dir: run folder for report.json, robustness.png, TensorBoard
            logs, the finished phases and the training backup (default
            `runs/<name>`).
        overwrite: replace a run folder that holds models trained with other
            settings (else a `RunExistsError` names what changed).
        saved_models: the TF Serving base folder exports go to.
        data_dir: the TFDS data folder.
        epochs: overrides the pipeline's epochs.
        baseline: also train the undefended model, for comparison.
        eval_examples: evaluate on N test examples spread evenly over the test
            split (default: the pipeline's `eval_examples`).
        export: export the hardened base model for TF Serving.
        strategy: a `tf.distribute.Strategy` (or a name for
            `nsladv.distribute.make_strategy`); models are built and compiled
            in its scope, and only the chief writes the report and export.
        precision: the training precision: "auto" (bfloat16 mixed
            precision where the hardware computes it natively, float32
            elsewhere; see `nsladv.precision`), "float32" or "bfloat16".
            Losses stay float32; evaluation, the robustness monitor and the
            export use a float32 copy of the model. A `keras.Model` given
            in Python trains in place, in the precision it was built in.
        callbacks: more Keras callbacks for every model's `fit`.
        overrides: the settings a caller changed from the pipeline's (e.g.
            the command line's `--epsilon`), recorded in the report as given.
        verbose: Keras progress bars (1), one line per epoch (2), none (0).
        log: where progress messages go.
        step_progress: follows each attack of the evaluations batch by batch
            (`evaluate_robustness`'s `step_progress`; e.g.
            `nsladv.jobs.console.AttackProgress()`), None for nothing.

    Returns:
        The report dict written to `out_dir/report.json`.

    Raises:
        TrainingDivergedError: a model's loss became NaN or infinite.
        ModelMismatchError, ModelNotFoundError: `model` does not fit.
        DataError: the data cannot be read or does not fit.
        RunExistsError: `out_dir` holds models trained with other settings.
    """
    pipeline = user_models.pipeline_of(pipeline)
    if model_path is not None:
        if model is not None:
            raise SettingsError("Pass `model` or `model_path`, not both. Received: both")
        model = model_path
    if data is not None:
        pipeline = pipeline.replace(dataset=data)
    name = name or (pathlib.Path(model).stem if isinstance(model, (str, pathlib.PurePath)) else None)
    if name is not None and name != pipeline.name:
        pipeline = pipeline.replace(name=name)
    if epochs is not None:
        pipeline = pipeline.replace(epochs=epochs)
    if eval_examples is not None:
        pipeline = pipeline.replace(eval_examples=eval_examples)
    if strategy is None or isinstance(strategy, str):
        # Before anything else touches TensorFlow's runtime: a multi-worker strategy must come first.
        strategy = distribute.make_strategy(strategy or "default")
    chosen = precision_lib.choose(precision)
    with precision_lib.policy_scope(chosen):
        job = _HardenJob(
            pipeline=pipeline,
            model=model,
            out_dir=pathlib.Path(out_dir or pathlib.Path("runs") / pipeline.name),
            overwrite=overwrite,
            saved_models=saved_models,
            data_dir=data_dir,
            baseline=baseline,
            strategy=strategy,
            precision=chosen,
            requested_precision=precision,
            callbacks=list(callbacks),
            overrides=dict(overrides or {}),
            verbose=verbose,
            log=log,
            step_progress=step_progress,
        )
        return job.run(export=export)


EVALUATION_SETTINGS = ("eval_epsilons", "eval_attacks", "eval_examples", "eval_split", "large_epsilon")


class _HardenJob:
    """One harden run, phase by phase; see `harden`."""

    def __init__(
        self,
        *,
        pipeline,
        model,
        out_dir,
        overwrite,
        saved_models,
        data_dir,
        baseline,
        strategy,
        precision,
        requested_precision,
        callbacks,
        overrides,
        verbose,
        log,
        step_progress,
    ):
        self.overrides = overrides
        self.step_progress = step_progress
        self.pipeline = pipeline
        self.user_model = model
        self.model_source = user_models.describe(model)
        self.out_dir = out_dir
        self.saved_models = saved_models
        self.callbacks = callbacks
        self.verbose = verbose
        self.log = log
        if strategy is None or isinstance(strategy, str):
            strategy = distribute.make_strategy(strategy or "default")
        self.strategy = strategy
        self.chief = distribute.is_chief(strategy)
        settings = pipeline.get_config()
        loaded = None if model is None else user_models.load(model)
        self.precision, loaded = user_models.training_precision(precision, requested_precision, model, loaded)
        self.state = run_state.RunState(
            out_dir,
            training={
                **{k: v for k, v in settings.items() if k not in EVALUATION_SETTINGS},
                "model": user_models.fingerprint(model),
                "precision": self.precision.name,
            },
            evaluation={k: settings[k] for k in EVALUATION_SETTINGS},
            writer=self.chief,
            overwrite=overwrite,
            overwrite_hint="--overwrite (overwrite=True in Python)",
        )
        if self.state.discarded:
            log(f"--overwrite: the earlier run's {' and '.join(self.state.discarded)} in {out_dir} were replaced")
        keras.utils.set_random_seed(pipeline.seed)
        log(f"precision: {self.precision.name} ({self.precision.reason})")
        self.data = pipeline_data(
            pipeline, data_dir=data_dir, eval_examples=pipeline.eval_examples, channels=declared_channels(loaded)
        )
        for line in describe_data(self.data):
            log(line)
        # Checked once, before any training: the model takes the data's images and scores its classes.
        self.from_logits = self._check_model(loaded)
        self.contenders = self._contenders(baseline)
        self.timings = {}
        self.training_logs = {}
        self.evaluated_in = "float32"
        self.titles = _TITLES

    def run(self, *, export):
        self._announce_plan(export)
        self.state.begin()
        models = {label: self.model(label, graph, adversarial) for label, graph, adversarial in self.contenders}
        # Attacks and the export see the model in float32, whatever it trained in.
        models = {label: self.float32_model(model) for label, model in models.items()}
        evaluations = {label: self.evaluate(label, model) for label, model in models.items()}
        report = self.report(evaluations)
        if not self.chief:
            return report
        self.write_report(report, evaluations)
        if export:
            report["export"] = str(self.export(models["hardened"], evaluations["hardened"]))
            # export_model reloaded it and compared its outputs with the evaluated model's on every evaluated digit.
            report["export_matches_the_evaluated_model_on"] = evaluations["hardened"]["test_examples"]
            report_lib.write_json(self.out_dir / "report.json", report)
        return report

    # Phases ------------------------------------------------------------------------

    def model(self, label, graph, adversarial):
        """The trained base model of a contender: trained now, or its weights from an earlier run."""
        pipeline = self.pipeline
        keras.utils.set_random_seed(pipeline.seed)  # Every contender starts from the same weights.
        with self.strategy.scope():
            base = self._base_model(label)
        seconds = self.state.trained_seconds(label)
        if seconds is not None:
            base.load_weights(self.state.weights_path(label))
            self.phase(f"the {_TITLES[label]} was trained by an earlier run: reusing it")
        else:
            seconds, training_log = training.train(self, label, base, graph, adversarial)
            self.state.save_model(label, base, seconds, training_log)
        self.timings[f"train_{label}_seconds"] = seconds
        if self.state.training_log(label) is not None:
            self.training_logs[label] = self.state.training_log(label)
        return base

    def evaluate(self, label, model):
        """The white-box evaluation of a trained model: run now, or kept from an earlier run."""
        evaluation, self.timings[f"evaluate_{label}_seconds"] = evaluation_phase(
            self.state,
            label,
            model,
            self.pipeline,
            self.data,
            announce=self.phase,
            progress=self._progress,
            from_logits=self.from_logits,
            step_progress=self.step_progress,
        )
        return evaluation

    def _progress(self, *result):
        self.log(report_lib.progress_line(*result))

    def report(self, evaluations):
        report = {
            "pipeline": self.pipeline.get_config(),
            "model": self.model_source,
            "overrides": self.overrides,
            "versions": report_lib.package_versions(),
            "evaluations": evaluations,
            "timings": self.timings,
            "precision": {**self.precision.to_dict(), "evaluation_and_export": self.evaluated_in},
        }
        if self.training_logs:
            report["training"] = self.training_logs
        if self.data.graph is not None:
            report["graph"] = self.data.graph
        return report

    def write_report(self, report, evaluations):
        """report.json, the plot and the summary: written before the export, which may fail."""
        self.phase(f"writing the report, the plot and the model card in {self.out_dir}")
        splits = self.data.splits
        write_run_files(
            self.out_dir,
            report,
            evaluations,
            title=self.pipeline.name,
            plot_title=f"{self.pipeline.name}: white-box robust accuracy ({splits.name} {self.data.eval_split})",
            model={
                "source": report["model"],
                "inputs": f"images {splits.image_shape}, pixels in {_interval(self.pipeline.input_range)}",
                "classes": splits.num_classes,
                "outputs": "logits" if self.from_logits else "probabilities",
            },
            dataset={
                "name": splits.name,
                "split": self.data.eval_split,
                "examples": evaluations["hardened"]["examples"],
            },
            hardening=self._hardening(),
            log=self.log,
        )

    def _hardening(self):
        """How the hardened model was trained, for its model card and its export's metadata."""
        return {
            "threat": self.pipeline.threat.get_config(),
            "regularization": self.pipeline.regularization.get_config(),
            "precision": {"training": self.precision.name, "evaluation_and_export": self.evaluated_in},
        }

    def export(self, base, evaluation):
        """The hardened model's TF Serving version: exported now, or the one this run exported before."""
        return export_phase(
            self.state,
            base,
            self.pipeline,
            self.data,
            what="the hardened model",
            saved_models=self.saved_models,
            metadata={**self._hardening(), "robustness": evaluation},
            announce=self.phase,
            log=self.log,
            from_logits=self.from_logits,
        )

    # Progress ------------------------------------------------------------------------

    def _announce_plan(self, export):
        """Logs the job's phases and an estimate of its time on this machine (see `nsladv.jobs.estimate`)."""
        shape = self.data.splits.image_shape
        self._timing = estimate.time_passes(self._checked_model, shape)
        evaluated = self.float32_model(self._checked_model)
        phases = estimate.plan(
            self,
            export,
            self._timing,
            None if evaluated is self._checked_model else estimate.time_passes(evaluated, shape),
        )
        self._phases, self._done = len(phases), 0
        left = [p.seconds for p in phases if p.seconds is not None]
        self.log(
            f"{self.pipeline.name}: {len(phases)} phases, about {console.duration(sum(left))} on this machine "
            f"(estimated from a timed pass of the model: {console.duration(self._timing.seconds(1e6))} "
            "a million example passes)"
        )
        for number, phase in enumerate(phases, 1):
            when = "done by an earlier run" if phase.seconds is None else f"about {console.duration(phase.seconds)}"
            self.log(f"  [{number}/{len(phases)}] {phase.title}: {when}")

    def phase(self, text):
        """Logs the start of the next phase with its number: `[3/6] white-box evaluation of ...`."""
        self._done += 1
        self.log(f"[{self._done}/{self._phases}] {text}")

    # Set-up ------------------------------------------------------------------------

    def float32_model(self, model):
        """The model computing in float32 (a copy with its weights), or itself where no copy can be made."""
        model, self.evaluated_in = precision_lib.measurable(model)
        return model

    def _check_model(self, loaded):
        """Whether the model outputs logits; raises when it does not fit the data (before any training)."""
        splits = self.data.splits
        model = loaded if loaded is not None else self.pipeline.build_model(splits.image_shape, splits.num_classes)
        from_logits = check_classifier(model, splits.image_shape, splits.num_classes, data_name=splits.name)
        # After the check's call, which builds a subclassed model's weights.
        self._initial_weights = [np.array(w) for w in model.get_weights()]
        self._checked_model = model  # timed for the job's estimate
        return from_logits

    def _base_model(self, label):
        """A fresh base model for a contender, every one from the same initial weights."""
        splits = self.data.splits
        if self.user_model is None:
            return self.pipeline.build_model(splits.image_shape, splits.num_classes)
        if isinstance(self.user_model, keras.Model):
            # The hardened model is the user's own object, as `nsladv.wrap` would train it; the others are clones.
            model = self.user_model if label == "hardened" else keras.models.clone_model(self.user_model)
            if not model.built:
                model(np.zeros((1, *splits.image_shape), np.float32))
            model.set_weights(self._initial_weights)
            return model
        return precision_lib.in_precision(user_models.load(self.user_model), self.precision)

    def _contenders(self, baseline):
        """(label, graph term, adversarial) of each model to train, all from the same initial weights."""
        graph = self.pipeline.graph.regularization if self.pipeline.graph is not None else None
        contenders = [("hardened", graph, True)]
        if graph is not None:
            contenders.append(("without_graph", None, True))
        if baseline and distribute.is_multi_worker(self.strategy):
            # Keras 3.15's own fit cannot train a plain model across workers
            # (keras-team/keras#20585); the wrapper works around it for itself.
            self.log("baseline skipped: Keras 3.15 cannot fit a plain model under MultiWorkerMirroredStrategy")
            baseline = False
        if baseline:
            contenders.append(("baseline", None, False))
        return contenders


_TITLES = {
    "hardened": "hardened model",
    "without_graph": "same model without the graph term",
    "baseline": "undefended baseline",
}


def _interval(pair):
    return f"[{pair[0]:g}, {pair[1]:g}]"
