"""How a harden job trains a contender: the wrapper, its warm-ups, the robustness monitor, the backup and logs."""

import time

import keras

from nsladv import datasets
from nsladv import distribute
from nsladv._extras import available
from nsladv.guards import RobustnessMonitor
from nsladv.guards import StopOnNonFiniteLoss
from nsladv.robustness.attacks import pgd
from nsladv.schedules import EpsilonWarmup
from nsladv.schedules import MultiplierWarmup
from nsladv.wrapper import AdversarialModel


def train(job, label, base, graph, adversarial):
    """Trains a contender's base model in place: (seconds, its monitor's log or None).

    `job` is the harden job (`nsladv.jobs.harden`): its pipeline, data,
    strategy, run folder and logging.
    """
    pipeline, data = job.pipeline, job.data
    with job.strategy.scope():
        model = base
        if adversarial:
            model = AdversarialModel(base, threat=pipeline.threat, regularization=pipeline.regularization, graph=graph)
        _compile(model, pipeline, int(data.train.cardinality()), job.from_logits)
    # The guard comes first: a diverged epoch must not reach the backup.
    callbacks = [StopOnNonFiniteLoss(f"the {job.titles[label]}")]
    if adversarial:
        callbacks += [
            EpsilonWarmup(pipeline.epsilon_warmup_epochs),
            MultiplierWarmup(pipeline.multiplier_warmup_epochs),
        ]
    monitor = _monitor(job, base, label) if adversarial else None
    if monitor is not None:
        callbacks.append(monitor)
    callbacks += [*job.callbacks, *_run_callbacks(job.out_dir, label, job.chief)]
    job.phase(
        f"training the {job.titles[label]}: {pipeline.epochs} epochs"
        + (f", {_describe(pipeline, graph)}" if adversarial else "")
        + ("" if pipeline.ema_momentum is None else f"; keeping the weights' average (EMA {pipeline.ema_momentum})")
    )
    start = time.perf_counter()
    model.fit(
        data.train if graph is not None else data.plain_train,
        validation_data=_or_none(data.validation),
        epochs=pipeline.epochs,
        callbacks=callbacks,
        shuffle=False,  # The pipeline shuffles.
        verbose=job.verbose,
    )
    seconds = round(time.perf_counter() - start, 1)
    if monitor is None:
        return seconds, None
    if monitor.kept_epoch is not None:
        kept = monitor.best if monitor.kept_epoch == monitor.best_epoch else monitor.history[-1]
        job.log(
            f"kept epoch {kept['epoch'] + 1} (most robust: epoch {monitor.best_epoch + 1}) on the monitor's "
            f"{len(monitor.y)} validation digits: {100 * kept['robust_accuracy']:.1f}% under "
            f"{monitor.attack.name} at epsilon {monitor.epsilon:g} (clean {100 * kept['clean_accuracy']:.1f}%)"
        )
    return seconds, {
        "monitor": {
            "attack": monitor.attack.get_config(),
            "epsilon": monitor.epsilon,
            "examples": len(monitor.y),
            "split": "validation",
        },
        "epochs": monitor.history,
        "best_epoch": monitor.best_epoch,
        "kept_epoch": monitor.kept_epoch,
        "collapsed_at": monitor.collapsed_at,
    }


def _monitor(job, base, label):
    """The PGD check after every epoch (best epoch, collapse), or None when the pipeline turns it off."""
    pipeline = job.pipeline
    epsilon = pipeline.threat.epsilon
    if not pipeline.monitor_examples or not isinstance(epsilon, float) or int(job.data.validation.cardinality()) == 0:
        return None
    x, y = datasets.as_arrays(datasets.spread(job.data.splits.validation, pipeline.monitor_examples))
    return RobustnessMonitor(
        base,
        x,
        y,
        epsilon=epsilon,
        attack=pgd(10, 1, clip_range=pipeline.threat.clip_range, norm=pipeline.threat.norm),
        from_logits=job.from_logits,
        seed=pipeline.seed,
        log=job.log,
        # Inside the training backup's folder: a resumed training compares with the epochs before it.
        backup_dir=_backup_dir(job.out_dir, label) / "monitor",
        writer=job.chief,
        averaged_weights=pipeline.ema_momentum is not None,
        measured_model=job.float32_model(base),  # every epoch measured as the evaluation will measure it
    )


def _describe(pipeline, graph=None):
    t, r = pipeline.threat, pipeline.regularization
    attack = "FGSM" if t.steps == 1 else f"PGD-{t.steps}"
    text = f"{attack} neighbors, {t.norm} epsilon={t.epsilon}, {r.distance} distance, multiplier={r.multiplier}"
    if graph is not None:
        text += (
            f"; graph term: {graph.max_neighbors} neighbors, {graph.distance} distance, multiplier={graph.multiplier}"
        )
    return text


def _or_none(dataset):
    return dataset if int(dataset.cardinality()) != 0 else None


def _compile(model, pipeline, steps_per_epoch, from_logits):
    model.compile(
        optimizer=pipeline.optimizer(steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=["accuracy"],
    )


def _backup_dir(out_dir, label):
    return out_dir / "backup" / label


def _run_callbacks(out_dir, label, chief):
    """The resumable backup (all workers read the chief's) and, on the chief, TensorBoard logs where TensorBoard
    is installed (tf.summary needs it; it comes with the `tune` extra)."""
    callbacks = [distribute.ClusterBackupAndRestore(str(_backup_dir(out_dir, label)), chief=chief)]
    if chief and available("tensorboard"):
        callbacks.append(keras.callbacks.TensorBoard(str(out_dir / "logs" / label)))
    return callbacks
