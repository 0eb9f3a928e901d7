"""A pipeline's data, assembled for its jobs: splits, tf.data pipelines, the natural graph;
and the phases harden and tune share: the white-box evaluation and the export."""

import dataclasses
import math
import time

import numpy as np
import tensorflow as tf

from nsladv import datasets
from nsladv import export as export_lib
from nsladv import graph as graph_lib
from nsladv.errors import SettingsError
from nsladv.jobs import report as report_lib
from nsladv.robustness.evaluation import evaluate_robustness
from nsladv.robustness.sets import fit_attacks


@dataclasses.dataclass(frozen=True)
class PipelineData:
    """A pipeline's splits and its batched train / validation / test datasets.

    For a graph pipeline `train` carries each example's graph neighbors
    and `plain_train` the same labelled examples without them; otherwise
    they are the same dataset. `graph` describes the graph (or is None).
    `test` is what the job evaluates: test examples, or with the pipeline's
    `eval_split="validation"` the validation examples the robustness
    monitor does not read (`eval_split` says which, `evaluated` how many).
    """

    splits: datasets.Splits
    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    plain_train: tf.data.Dataset = None
    graph: dict = None
    eval_split: str = "test"
    evaluated: int = None


def pipeline_data(pipeline, *, data_dir=None, eval_examples=None, validation_fraction=None, channels=None):
    """Loads a pipeline's dataset and builds its tf.data pipelines.

    Args:
        pipeline: an `nsladv.Pipeline`.
        data_dir: the TFDS data folder.
        eval_examples: evaluate on N test examples spread evenly over the test split.
        validation_fraction: overrides the pipeline's.
        channels: decode image files with this many channels (the model's; None: as stored).
    """
    fraction = pipeline.validation_fraction if validation_fraction is None else validation_fraction
    splits = datasets.resolve(
        pipeline.dataset,
        data_dir=data_dir,
        validation_fraction=fraction,
        input_range=pipeline.input_range,
        channels=channels,
    )
    if pipeline.train_examples is not None:
        kept = datasets.spread_rows(int(splits.train.cardinality()), pipeline.train_examples)
        splits = dataclasses.replace(
            splits,
            train=datasets.spread(splits.train, pipeline.train_examples),
            train_ids=None if splits.train_ids is None else tuple(np.asarray(splits.train_ids)[kept].tolist()),
        )
    augment = datasets.random_shift(pipeline.shift_augmentation) if pipeline.shift_augmentation else None
    batches = dict(batch_size=pipeline.batch_size, training=True, seed=pipeline.seed)
    graph_info = None
    if pipeline.labels_per_class is None and pipeline.graph is None:
        train = plain_train = datasets.input_pipeline(splits.train, augment=augment, **batches)
    else:
        images, labels = datasets.as_arrays(splits.train)
        labelled = np.arange(len(labels))
        if pipeline.labels_per_class is not None:
            labelled = datasets.few_labels(labels, pipeline.labels_per_class, seed=pipeline.seed)
        if pipeline.graph is None:
            examples = tf.data.Dataset.from_tensor_slices((images[labelled], labels[labelled]))
            train = plain_train = datasets.input_pipeline(examples, augment=augment, **batches)
        else:
            table, graph_info = _neighbor_table(pipeline, images, labels, labelled, splits.train_ids)
            batch_augment = (
                datasets.random_shift_batch(pipeline.shift_augmentation) if pipeline.shift_augmentation else None
            )
            rows, weights = labelled, None
            if pipeline.graph.train_on_all and len(labelled) < len(labels):
                rows, known, weights = graph_lib.semi_supervised_rows(
                    len(labels), labelled, labelled_share=pipeline.graph.labelled_share
                )
                targets = np.where(known, labels[rows], 0)  # Unlabelled rows: weight 0, placeholder 0.
            else:
                targets = labels[rows]
            graph_info["training_rows"] = int(len(rows))
            train, plain_train = (
                table.dataset(rows, targets, sample_weights=weights, neighbors=n, augment=batch_augment, **batches)
                for n in (True, False)
            )
    validation = datasets.input_pipeline(splits.validation, batch_size=512, training=False)
    if pipeline.eval_split == "validation":
        total = int(splits.validation.cardinality())
        rows = datasets.unmonitored_rows(total, pipeline.monitor_examples, eval_examples)
        if rows.size == 0:
            raise SettingsError(
                "eval_split='validation' evaluates the validation examples the robustness monitor does not read, "
                "and none are left: lower `monitor_examples` or raise `validation_fraction`. "
                f"Received: monitor_examples={pipeline.monitor_examples}, {total} validation examples"
            )
        evaluated = datasets.take_rows(splits.validation, rows)
    else:
        evaluated = datasets.spread(splits.test, eval_examples)
    test = datasets.input_pipeline(evaluated, batch_size=500, training=False)
    count = int(evaluated.cardinality())
    return PipelineData(splits, train, validation, test, plain_train, graph_info, pipeline.eval_split, count)


def describe_data(data):
    """The lines a job logs about its data (and its graph, and what a user's edge file could not place)."""
    splits = data.splits
    evaluated = f"{data.evaluated} test examples evaluated"
    if data.eval_split == "validation":
        evaluated = f"{data.evaluated} validation examples evaluated (those the monitor does not read; no test split)"
    lines = [
        f"data: {splits.name}, images {splits.image_shape}, {splits.num_classes} classes; "
        f"{int(splits.train.cardinality())} train, {int(splits.validation.cardinality())} validation (carved "
        f"from the train split), {evaluated}"
    ]
    g = data.graph
    if g is None:
        return lines
    agreement = "none" if g["neighbor_label_agreement"] is None else f"{100 * g['neighbor_label_agreement']:.1f}%"
    lines.append(
        f"graph: {g['edges']} edges over {g['nodes']} training images in {g['build_seconds']} s, "
        f"{g['nodes_with_neighbors']} of them with neighbors; "
        f"{g['labelled_with_neighbors']} of {g['labelled']} labelled images have neighbors "
        f"({g['mean_neighbors_of_labelled']} on average, {agreement} same class)"
    )
    read = g.get("edges_file")
    if read is not None and read["edges_left_out"]:
        lines.append(
            f"graph file {g['edges_tsv']}: {read['edges_left_out']} of its {read['edges']} edges left out, "
            f"naming {read['unknown_ids']} ids that are not training examples "
            f"(e.g. {', '.join(read['unknown_examples'])})"
        )
    return lines


def _neighbor_table(pipeline, images, labels, rows, ids):
    """The graph over every training image (built, or read from the user's edges); the labelled `rows`' neighbors."""
    setup = pipeline.graph
    start = time.perf_counter()
    read = None
    if setup.edges is not None:
        graph, read = graph_lib.Graph.read_tsv_over(setup.edges, ids)
    else:
        embeddings = graph_lib.embed(images) if setup.embed is None else np.asarray(setup.embed(images), np.float32)
        graph = graph_lib.build_graph(
            embeddings,
            similarity_threshold=setup.similarity_threshold,
            lsh_splits=setup.lsh_splits,
            lsh_rounds=setup.lsh_rounds,
            seed=pipeline.seed,
        )
    k = setup.regularization.max_neighbors
    table = graph_lib.NeighborTable(graph, images, max_neighbors=k, feature_name="image")
    counts = table.neighbor_counts[rows]
    # All labels are known here, so the report can say how often an edge
    # joins equal digits; training sees only the labels of `rows`.
    agreement = graph_lib.neighbor_purity(graph, labels, k, rows=rows)
    info = {
        "nodes": graph.num_nodes,
        "edges": graph.num_edges,
        "nodes_with_neighbors": int((table.neighbor_counts > 0).sum()),
        "labelled": int(len(rows)),
        "labelled_with_neighbors": int((counts > 0).sum()),
        "mean_neighbors_of_labelled": round(float(counts.mean()), 2),
        "neighbor_label_agreement": None if math.isnan(agreement) else round(agreement, 4),
        "build_seconds": round(time.perf_counter() - start, 1),
        **setup.get_config(),
    }
    if read is not None:
        info["edges_file"] = read
    return table, info


def export_for_serving(base, pipeline, data, *, saved_models, metadata, from_logits=True):
    """Exports `base` as the pipeline's next version, four test images as warmup.

    The export is checked against `base` on every evaluated test image
    (`export_model`'s `check_inputs`), so the evaluation's figures describe
    what is shipped.
    """
    evaluated = datasets.as_arrays(data.test.unbatch())[0]
    warmup = evaluated[:4]
    return export_lib.export_model(
        base,
        saved_models,
        pipeline.name,
        input_shape=data.splits.image_shape,
        from_logits=from_logits,
        metadata={**metadata, "pipeline": pipeline.get_config(), "versions": report_lib.package_versions()},
        warmup_inputs=warmup,
        check_inputs=evaluated,
    )


def evaluation_phase(state, label, model, pipeline, data, *, announce, progress, from_logits=True, step_progress=None):
    """The white-box evaluation of a trained model: run now, or kept in `state` from an earlier run.

    `state` is the job's `RunState`; `label` names the model there
    ("hardened", "baseline", "tuned"). `announce` logs the phase's start,
    `progress` each finished (attack, epsilon) step. Returns
    `(evaluation, seconds)`, the seconds of the run that made it.
    """
    found = state.evaluation(label)
    if found is not None:
        announce(f"the {label} model's evaluation was made by an earlier run: reusing it")
        return found
    announce(
        f"white-box evaluation of the {label} model: {', '.join(a.name for a in pipeline.eval_attacks)} "
        f"at epsilon {', '.join(f'{e:g}' for e in pipeline.eval_epsilons)}"
    )
    start = time.perf_counter()
    evaluation = evaluate_robustness(
        model,
        data.test,
        epsilons=pipeline.eval_epsilons,
        attacks=fit_attacks(
            pipeline.eval_attacks, clip_range=pipeline.input_range, num_classes=data.splits.num_classes
        ),
        from_logits=from_logits,
        large_epsilon=pipeline.large_epsilon,
        progress=progress,
        step_progress=step_progress,
    )
    seconds = round(time.perf_counter() - start, 1)
    state.save_evaluation(label, evaluation, seconds)
    return evaluation, seconds


def export_phase(state, base, pipeline, data, *, what, saved_models, metadata, announce, log, from_logits=True):
    """`base`'s TF Serving version (`export_for_serving`): exported now, or the one this run exported before.

    `what` names the model in the announcement ("the hardened model").
    Returns the export's path.
    """
    announce(f"exporting {what} for TF Serving")
    if state.export is not None:
        log(f"exported for TF Serving by an earlier run: {state.export}")
        return state.export
    path = export_for_serving(
        base, pipeline, data, saved_models=saved_models, metadata=metadata, from_logits=from_logits
    )
    state.save_export(path)
    log(f"exported for TF Serving: {path}")
    return path
