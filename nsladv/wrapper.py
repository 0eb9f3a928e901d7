"""The wrapper: a `keras.Model` that trains a base model with adversarial neighbors."""

import keras
import tensorflow as tf

from nsladv import _keras
from nsladv import distribute
from nsladv import losses as losses_lib
from nsladv.configs import GraphRegularization
from nsladv.configs import Regularization
from nsladv.configs import ThreatModel
from nsladv.configs import check_compatible
from nsladv.graph import term
from nsladv.neighbors import NeighborBuilder
from nsladv.neighbors import as_tensors

_NEIGHBOR_TRACKERS = ("clean_loss", "neighbor_loss", "graph_loss")


class _Knobs:
    """Run-time strengths read inside the compiled step (not model state).

    A plain object, so Keras does not track its variables: the wrapper's
    weights stay exactly the base model's, and a callback can change the
    epsilon or multiplier strength without retracing the train step.
    """

    def __init__(self):
        self.epsilon_scale = tf.Variable(1.0, trainable=False, name="epsilon_scale")
        self.multiplier_scale = tf.Variable(1.0, trainable=False, name="multiplier_scale")


@keras.saving.register_keras_serializable(package="nsladv")
class AdversarialModel(keras.Model):
    """Trains `base_model` with a neighbor-consistency loss on adversarial neighbors.

    For each batch (x, y, w) the train step computes

        total = L(y, f(x); w) + multiplier * D [+ graph.multiplier * G]

    where x' is the adversarial neighbor of x under `threat`, built by NSL's
    `nsl.lib.gen_adv_neighbor`, and D is `L(y, f(x'); w)` for the `label`
    distance or a divergence between f(x) and f(x') (see `Regularization`).
    The neighbor is a constant for the weights' gradient. A regularization
    multiplier of 0 turns the adversarial term off (no neighbor is built).

    With `graph` (a `GraphRegularization`), G is the graph term over the
    natural neighbors that ride in the features in NSL's packed format
    (`NL_nbr_<j>_<feature>`, `NL_nbr_<j>_weight`; see `nsladv.graph`): the
    edge-weighted distance between each sample's outputs and its neighbors'
    (NSL's `GraphRegularization` objective), in the same step as the
    adversarial term. Neighbors with weight 0 (missing) count for nothing.

    Cost per step: for the `label` distance without a random start, the clean
    pass's one backward pass gives both the weights' gradient and the input
    gradient that takes the first step, wherever that gradient is the attack
    loss's: the base model computes the same in training and inference mode
    (no dropout, batch normalization, random augmentation or activity
    regularizer), adds no input-dependent loss and computes in float32. Other
    models take the first step from its own inference-mode pass, like every
    later step. The neighbor adds one forward and one backward pass, and each
    further PGD step one forward and one backward pass to the input. An
    example with sample weight 0 adds nothing to any loss term; with the
    fused first step its neighbor takes no first step (its gradient is 0).
    With a random start, or a divergence, every PGD step needs its own pass;
    the clean and neighbor passes then share one backward.
    The graph term adds one forward and one backward pass over the batch's
    `batch * max_neighbors` neighbors (with a graph divergence, the label
    step above gives way to the shared-backward one). Neighbor-building
    passes call the base model with `training=False` (dropout off, BatchNorm
    statistics untouched); the clean, neighbor and graph-neighbor training
    passes use `training=True`. `MultiplierWarmup` ramps the adversarial
    multiplier only; the graph multiplier is constant.

    The wrapper owns no weights: `call`, `predict`, `save` and `export` go to
    the base model, which is what you keep, evaluate and ship.

    Logs `loss` (the total), `clean_loss`, `neighbor_loss` (and `graph_loss`)
    and the compiled metrics on clean inputs; `evaluate` reports the clean
    loss and metrics.

    Args:
        base_model: the `keras.Model` to harden (sequential, functional or
            subclassed; tensor, list or dict inputs; one or more outputs).
        threat: a `ThreatModel` (default: `ThreatModel()`).
        regularization: a `Regularization` (default: `Regularization()`).
        name: the wrapper's name.
        graph: a `GraphRegularization`, or None for no graph term.
        **kwargs: passed to `keras.Model`.

    Example:

    ```python
    model = keras.Sequential([keras.Input((28, 28, 1)), ..., keras.layers.Dense(10)])
    hardened = nsladv.wrap(model, epsilon=0.1, steps=1, multiplier=0.5)
    hardened.compile(optimizer="adam",
                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                     metrics=["accuracy"])
    hardened.fit(x_train, y_train, epochs=5)
    model.save("hardened.keras")   # the base model, now hardened
    ```
    """

    def __init__(self, base_model, *args, threat=None, regularization=None, graph=None, name=None, **kwargs):
        if args:
            raise TypeError(
                "AdversarialModel takes the base model positionally and every "
                "other setting as a keyword, e.g. AdversarialModel(model, "
                f"threat=ThreatModel(...)). Received: {len(args)} extra positional "
                f"argument(s): {args!r}"
            )
        _validate_base_model(base_model)
        threat = ThreatModel() if threat is None else threat
        regularization = Regularization() if regularization is None else regularization
        _validate_config("threat", threat, ThreatModel)
        _validate_config("regularization", regularization, Regularization)
        check_compatible(threat, regularization)
        if graph is not None:
            _validate_config("graph", graph, GraphRegularization)
        super().__init__(name=name or f"adversarial_{base_model.name}", **kwargs)
        self.base_model = base_model
        if base_model.built:
            self.built = True  # No weights of its own: built when the base is.
        self.threat = threat
        self.regularization = regularization
        self.graph = graph
        if getattr(base_model, "output_names", None):
            self.output_names = list(base_model.output_names)
        self._neighbors = NeighborBuilder(threat, random_start=threat.uses_random_start(regularization.distance))
        self._knobs = _Knobs()
        self._fused_exact = None  # Decided at the first train step (see _label_step).
        self._from_logits = regularization.from_logits
        self._graph_from_logits = graph.from_logits if graph is not None else None
        self.clean_loss_tracker = keras.metrics.Mean(name="clean_loss")
        self.neighbor_loss_tracker = keras.metrics.Mean(name="neighbor_loss")
        self.graph_loss_tracker = keras.metrics.Mean(name="graph_loss") if graph is not None else None

    # Strengths, for warm-up schedules ---------------------------------------

    @property
    def epsilon_scale(self):
        """Fraction of epsilon (and step size) in force, in [0, 1]."""
        return float(self._knobs.epsilon_scale.numpy())

    @epsilon_scale.setter
    def epsilon_scale(self, value):
        self._knobs.epsilon_scale.assign(_fraction("epsilon_scale", value))

    @property
    def multiplier_scale(self):
        """Fraction of the regularization multiplier in force, in [0, 1]."""
        return float(self._knobs.multiplier_scale.numpy())

    @multiplier_scale.setter
    def multiplier_scale(self, value):
        self._knobs.multiplier_scale.assign(_fraction("multiplier_scale", value))

    # Keras hooks --------------------------------------------------------------

    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, **kwargs):
        if loss is None:
            raise ValueError(
                "AdversarialModel.compile() needs a `loss`: it builds the "
                "adversarial neighbors and trains on it. Pass the loss you would "
                "give the base model, e.g. loss='sparse_categorical_crossentropy'. "
                "Received: loss=None"
            )
        if self.regularization.distance in ("kl", "js"):
            self._from_logits = losses_lib.resolve_from_logits(self.regularization.from_logits, loss)
        if self.graph is not None and self.graph.distance in ("kl", "js"):
            self._graph_from_logits = losses_lib.resolve_from_logits(self.graph.from_logits, loss)
        super().compile(optimizer=optimizer, loss=loss, loss_weights=loss_weights, **kwargs)
        # A second loss object for neighbor and attack losses, so that the
        # per-output loss metrics of the compiled loss see clean inputs only.
        # Set past Keras' attribute tracking: its metrics are not the wrapper's.
        object.__setattr__(
            self,
            "_neighbor_loss",
            _keras.compiled_loss_copy(loss, loss_weights, output_names=getattr(self, "output_names", None)),
        )

    def compile_from_config(self, config):
        # compile() keeps Keras' signature, so the saved compile config applies.
        self.compile(**keras.saving.deserialize_keras_object(config))

    def call(self, inputs, training=None):
        return self.base_model(self._without_graph_neighbors(inputs), training=training)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        _check_labels(y)
        x, graph_neighbors = self._graph_neighbors(as_tensors(x))
        adversarial = self.regularization.multiplier > 0
        if (
            adversarial
            and self.regularization.distance == "label"
            and not self._neighbors.random_start
            and (graph_neighbors is None or self.graph.distance == "label")
        ):  # The clean backward may also give the first step's input gradient.
            y_pred, terms, gradients = self._label_step(x, y, sample_weight, graph_neighbors)
        else:
            y_pred, terms, gradients = self._joint_step(x, y, sample_weight, graph_neighbors, adversarial)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
        return self._for_reduction(self._update_trackers(x, y, y_pred, sample_weight, terms))

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        data = (self._without_graph_neighbors(x), y, sample_weight)
        logs = super().test_step(data)
        return self._for_reduction({k: v for k, v in logs.items() if k not in _NEIGHBOR_TRACKERS})

    def _for_reduction(self, logs):
        # Keras 3.15's fit reduces logs across workers with
        # strategy.reduce("MEAN", v, axis=0), which rejects scalars
        # (keras-team/keras#20585): give it rank-1 values to average.
        if distribute.is_multi_worker(self.distribute_strategy):
            return {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15 learns input shapes by reducing the first distributed
        # batch across workers, which fails under MultiWorkerMirroredStrategy
        # (keras-team/keras#20585); this replica's own batch has the shapes.
        # tests/test_distribute.py runs two real workers and fails if Keras
        # changes this hook.
        if iterator is None or not distribute.is_multi_worker(self.distribute_strategy):
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        _keras.require_symbolic_build_hook()
        for _, _, batches in iterator:
            batch = next(batches)
            break
        local = keras.tree.map_structure(
            lambda v: (
                self.distribute_strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues)
                else v
            ),
            batch,
        )
        with self.distribute_strategy.scope():
            _keras.symbolic_build(self, local)

    def predict(self, x, *args, **kwargs):
        return self.base_model.predict(self._without_graph_neighbors(x), *args, **kwargs)

    def save(self, *args, **kwargs):
        """Saves the base model (the wrapper adds no weights)."""
        return self.base_model.save(*args, **kwargs)

    def export(self, *args, **kwargs):
        """Exports the base model (the wrapper is for training only)."""
        return self.base_model.export(*args, **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "base_model": keras.saving.serialize_keras_object(self.base_model),
            "threat": self.threat.get_config(),
            "regularization": self.regularization.get_config(),
            "graph": None if self.graph is None else self.graph.get_config(),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        base_model = keras.saving.deserialize_keras_object(config.pop("base_model"), custom_objects=custom_objects)
        graph = config.pop("graph", None)
        return cls(
            base_model,
            threat=ThreatModel.from_config(config.pop("threat")),
            regularization=Regularization.from_config(config.pop("regularization")),
            graph=None if graph is None else GraphRegularization.from_config(graph),
            **config,
        )

    # Steps -----------------------------------------------------------------

    def _label_step(self, x, y, sample_weight, graph_neighbors):
        """Label distance, no random start: one backward gives both gradients where that is exact.

        The clean training pass's input gradient is the attack loss's (in
        direction, per example) when the model computes the same in training
        and inference mode, adds no input-dependent loss and computes in
        float32 or wider; an example's positive sample weight scales its
        gradient without turning its step. Otherwise the first step takes its
        own inference-mode pass, like the steps after it.
        """
        inputs = self._neighbors.select(x)
        with tf.GradientTape() as tape:
            tape.watch(list(inputs.values()))
            y_pred = self.base_model(x, training=True)
            weights = self.trainable_weights  # after the call: it may build the model
            clean_loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            scaled = self.optimizer.scale_loss(clean_loss)
        fused = self._fused_step_is_exact() and not _keras.input_dependent_losses(self.base_model)
        grads = tape.gradient(scaled, weights + (list(inputs.values()) if fused else []))
        clean_grads = grads[: len(weights)]
        x_adv = self._neighbors(
            x,
            model_fn=self._attack_model_fn,
            loss_fn=lambda pred: self._label_loss(y, pred),
            first_gradient=dict(zip(inputs, grads[len(weights) :])) if fused else None,
            epsilon_scale=self._knobs.epsilon_scale,
        )
        terms = {"clean_loss": clean_loss}
        with tf.GradientTape() as tape:
            terms["neighbor_loss"] = self._label_loss(y, self.base_model(x_adv, training=True), sample_weight)
            total = self._multiplier() * terms["neighbor_loss"]
            if graph_neighbors is not None:  # The label distance needs no gradient through f(x).
                terms["graph_loss"] = self._graph_loss(y, y_pred, graph_neighbors, sample_weight)
                total += self.graph.multiplier * terms["graph_loss"]
            scaled = self.optimizer.scale_loss(total)
        neighbor_grads = tape.gradient(scaled, weights)
        return y_pred, terms, [_add(a, b) for a, b in zip(clean_grads, neighbor_grads)]

    def _joint_step(self, x, y, sample_weight, graph_neighbors, adversarial):
        """Random start, divergence or no adversarial term: one shared backward."""
        distance = self.regularization.distance
        with tf.GradientTape() as tape:
            y_pred = self.base_model(x, training=True)
            clean_loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            terms = {"clean_loss": clean_loss, "neighbor_loss": tf.constant(0.0)}
            total = clean_loss
            if adversarial:
                with tape.stop_recording():
                    if distance == "label":
                        attack_loss = lambda pred: self._label_loss(y, pred)
                    else:
                        target = keras.tree.map_structure(tf.stop_gradient, y_pred)
                        attack_loss = lambda pred: self._divergence(target, pred)
                    x_adv = self._neighbors(
                        x,
                        model_fn=self._attack_model_fn,
                        loss_fn=attack_loss,
                        epsilon_scale=self._knobs.epsilon_scale,
                    )
                y_adv = self.base_model(x_adv, training=True)
                if distance == "label":
                    terms["neighbor_loss"] = self._label_loss(y, y_adv, sample_weight)
                else:
                    terms["neighbor_loss"] = self._divergence(y_pred, y_adv, sample_weight)
                total += self._multiplier() * terms["neighbor_loss"]
            if graph_neighbors is not None:
                terms["graph_loss"] = self._graph_loss(y, y_pred, graph_neighbors, sample_weight)
                total += self.graph.multiplier * terms["graph_loss"]
            scaled = self.optimizer.scale_loss(total)
        return y_pred, terms, tape.gradient(scaled, self.trainable_weights)

    # Graph neighbors (nsladv.graph.term) ----------------------------------------

    def _graph_neighbors(self, x):
        return term.split_neighbors(self.graph, self.base_model, x)

    def _without_graph_neighbors(self, x):
        return term.without_neighbors(self.graph, self.base_model, x)

    def _graph_loss(self, y, y_pred, graph_neighbors, sample_weight):
        return term.graph_loss(
            self.graph,
            self.base_model,
            y,
            y_pred,
            graph_neighbors,
            sample_weight,
            self._label_loss,
            from_logits=bool(self._graph_from_logits),
        )

    def _fused_step_is_exact(self):
        if self._fused_exact is None:
            self._fused_exact = _keras.behaves_the_same_in_training(self.base_model) and not any(
                getattr(layer, "compute_dtype", None) == "float16"
                for layer in [self.base_model, *_keras.sublayers(self.base_model)]
            )
        return self._fused_exact

    def _attack_model_fn(self, inputs):
        return self.base_model(inputs, training=False)

    def _label_loss(self, y, y_pred, sample_weight=None):
        return tf.cast(self._neighbor_loss(y, y_pred, sample_weight), tf.float32)

    def _divergence(self, clean, neighbor, sample_weight=None):
        return losses_lib.divergence(
            self.regularization.distance,
            clean,
            neighbor,
            from_logits=bool(self._from_logits),
            sample_weight=sample_weight,
        )

    def _multiplier(self):
        return self.regularization.multiplier * self._knobs.multiplier_scale

    def _update_trackers(self, x, y, y_pred, sample_weight, terms):
        batch = tf.shape(next(v for v in keras.tree.flatten(x) if v is not None))[0]
        unscale = losses_lib.unscale_for_distribution
        clean = unscale(tf.cast(terms["clean_loss"], tf.float32))
        neighbor = unscale(terms["neighbor_loss"])
        total = clean + self._multiplier() * neighbor
        self.clean_loss_tracker.update_state(clean, sample_weight=batch)
        self.neighbor_loss_tracker.update_state(neighbor, sample_weight=batch)
        if self.graph_loss_tracker is not None:
            graph = unscale(terms.get("graph_loss", tf.constant(0.0)))
            total += self.graph.multiplier * graph
            self.graph_loss_tracker.update_state(graph, sample_weight=batch)
        _keras.update_total_loss(self, total, batch)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _add(a, b):
    """Sums two gradients; sparse ones (embeddings) stay sparse."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, tf.IndexedSlices) and isinstance(b, tf.IndexedSlices):
        return tf.IndexedSlices(tf.concat([a.values, b.values], 0), tf.concat([a.indices, b.indices], 0), a.dense_shape)
    return tf.convert_to_tensor(a) + tf.convert_to_tensor(b)


def _fraction(name, value):
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be in [0, 1]. Received: {name}={value!r}")
    return value


def _check_labels(y):
    if y is None:
        raise ValueError(
            "AdversarialModel trains on labelled data: pass `y` to fit() (or a "
            "tf.data.Dataset of (x, y) or (x, y, sample_weight) tuples). Labels "
            "never ride inside the features. Received: data without labels (y=None)"
        )


def _validate_base_model(base_model):
    if not isinstance(base_model, keras.Model):
        hint = ""
        module = type(base_model).__module__
        if module.startswith(("tf_keras", "keras.src.engine", "tensorflow.python.keras")):
            hint = " This looks like a legacy tf-keras model; build it with Keras 3 (`import keras`)."
        raise TypeError(
            f"Expected a Keras 3 `keras.Model` to wrap.{hint} "
            f"Received: base_model of type {type(base_model).__module__}.{type(base_model).__name__}"
        )
    if isinstance(base_model, AdversarialModel):
        raise TypeError(
            "The model is already an AdversarialModel; wrap its base model instead. "
            f"Received: base_model={base_model.name!r}"
        )


def _validate_config(name, value, cls):
    if not isinstance(value, cls):
        raise TypeError(f"`{name}` must be a nsladv.{cls.__name__}. Received: {name}={value!r}")


_THREAT_FIELDS = ("epsilon", "norm", "steps", "step_size", "random_start", "clip_range", "feature_mask")
_REGULARIZATION_FIELDS = ("multiplier", "distance", "from_logits")


def wrap(base_model, *args, threat=None, regularization=None, graph=None, name=None, **settings):
    """Wraps `base_model` for adversarial training; the two-line change.

    Args:
        base_model: the `keras.Model` to harden.
        threat: a `ThreatModel`, or give its settings as keywords:
            `epsilon`, `norm`, `steps`, `step_size`, `random_start`,
            `clip_range`, `feature_mask`.
        regularization: a `Regularization`, or give its settings as keywords:
            `multiplier`, `distance`, `from_logits`.
        graph: a `GraphRegularization` to add the graph term over natural
            neighbors (None: none).
        name: the wrapper's name.

    Returns:
        An `AdversarialModel`; compile and fit it as you would the base model.

    Raises:
        TypeError: for positional settings or unknown keywords.
        ValueError: for invalid settings (see `ThreatModel`, `Regularization`).

    Example:

    ```python
    hardened = nsladv.wrap(model, epsilon=0.3, steps=10, clip_range=(0, 1))
    hardened.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    hardened.fit(dataset, epochs=5)
    ```
    """
    if args:
        raise TypeError(
            "nsladv.wrap() takes the model positionally and its settings as "
            "keywords, e.g. nsladv.wrap(model, epsilon=0.1, multiplier=0.2). "
            f"Received: {len(args)} positional setting(s) after the model: {args!r}"
        )
    unknown = sorted(set(settings) - set(_THREAT_FIELDS) - set(_REGULARIZATION_FIELDS))
    if unknown:
        raise TypeError(
            f"nsladv.wrap() got unknown settings {unknown}. Expected some of "
            f"{sorted(_THREAT_FIELDS + _REGULARIZATION_FIELDS)}, or threat=/regularization=."
        )
    threat = _merge("threat", threat, ThreatModel, _THREAT_FIELDS, settings)
    regularization = _merge("regularization", regularization, Regularization, _REGULARIZATION_FIELDS, settings)
    return AdversarialModel(base_model, threat=threat, regularization=regularization, graph=graph, name=name)


def _merge(name, config, cls, fields, settings):
    given = {k: v for k, v in settings.items() if k in fields}
    if config is None:
        return cls(**given)
    if given:
        raise TypeError(
            f"Pass either `{name}=` or its settings {sorted(given)}, not both. "
            f"Received: {name}={config!r} and {given!r}"
        )
    return config
