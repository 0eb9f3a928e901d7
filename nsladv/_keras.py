"""What nsladv asks of a Keras model beyond its public API, in one place.

Every read of Keras' private attributes goes through this module, guarded:
when a Keras release drops one, only the feature that needs it degrades, to
the safe choice. Two private hooks are overridden where they are needed, each
behind a check here and a test that fails when Keras drops it: the wrapper's
`_maybe_symbolic_build` (`has_symbolic_build_hook`) and the cluster backup's
`BackupAndRestore._save_model` (`backup_save_hook_exists`).
"""

import keras

from nsladv.settings_checks import is_number

# Keras layers whose output in training mode differs from inference mode
# (their own `training` argument; many other layers accept it and ignore it).
_TRAINING_DEPENDENT = (
    keras.layers.Dropout,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
    keras.layers.BatchNormalization,
)
_RATE_ATTRIBUTES = ("dropout", "recurrent_dropout", "_dropout", "rate")


def sublayers(model):
    """Every layer inside `model`, recursively (not the model itself)."""
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=False, recursive=True))
    found, stack = [], list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        found.append(layer)
        stack.extend(getattr(layer, "layers", []))
    return found


def _is_training_dependent(layer):
    if isinstance(layer, _TRAINING_DEPENDENT) or type(layer).__name__.startswith("Random"):
        return True
    if any(_positive(getattr(layer, name, None)) for name in _RATE_ATTRIBUTES):
        return True
    if type(layer).__module__.startswith("keras."):
        return False
    # A user's own layer that takes `training` may use it.
    return not sublayers(layer) and bool(getattr(layer, "_call_has_training_arg", True))


def _positive(value):
    return is_number(value) and value > 0


def behaves_the_same_in_training(model):
    """Whether `model(x, training=True)` is `model(x, training=False)`, with no input-dependent loss.

    Conservative: a layer this cannot vouch for (dropout, batch
    normalization, random augmentation, an activity regularizer, a user's
    layer that takes `training`) makes it False.
    """
    for layer in sublayers(model):
        if getattr(layer, "activity_regularizer", None) is not None or _is_training_dependent(layer):
            return False
    return True


def input_dependent_losses(model):
    """How many of `model.losses` came from its last call (`add_loss`), not from weight regularizers.

    Read inside the step that called the model. When Keras no longer says
    which losses are the weights', every loss counts (the safe answer).
    """
    total = len(model.losses)
    weights = getattr(model, "_get_regularization_losses", None)
    return total - len(weights()) if weights is not None else total


# Losses ----------------------------------------------------------------------------

try:  # Private; a single loss works without it.
    from keras.src.trainers.compile_utils import CompileLoss as _CompileLoss
except ImportError:  # pragma: no cover - depends on the Keras release
    _CompileLoss = None


def compiled_loss_copy(loss, loss_weights, output_names):
    """A second loss object like `compile(loss=..., loss_weights=...)` makes, with metrics of its own.

    The neighbor and attack losses go through it, so that the compiled loss's
    per-output metrics see clean inputs only. Without Keras' CompileLoss, a
    single loss still works; a structure of losses is refused with a message
    that names what is missing.
    """
    if _CompileLoss is not None:
        return _CompileLoss(loss, loss_weights, output_names=output_names)
    if isinstance(loss, (dict, list, tuple)) or loss_weights is not None:
        raise NotImplementedError(
            "A loss per output needs keras.src.trainers.compile_utils.CompileLoss (Keras 3.x, tested with "
            f"3.15), which this Keras lacks. Received: loss={loss!r}, keras {keras.__version__}"
        )
    single = keras.losses.get(loss)
    return lambda y, y_pred, sample_weight=None: single(y, y_pred, sample_weight=sample_weight)


def update_total_loss(model, value, batch_size):
    """Feeds the `loss` entry of `fit`'s logs, which Keras' own train step feeds otherwise."""
    tracker = getattr(model, "_loss_tracker", None)
    if tracker is not None:
        tracker.update_state(value, sample_weight=batch_size)


# Building under MultiWorkerMirroredStrategy -----------------------------------------

SYMBOLIC_BUILD_HOOK = "_maybe_symbolic_build"


def has_symbolic_build_hook():
    return hasattr(keras.Model, SYMBOLIC_BUILD_HOOK) and hasattr(keras.Model, "_symbolic_build")


def require_symbolic_build_hook():
    """Raises for multi-worker training when Keras lacks the hook nsladv's work-around needs."""
    if not has_symbolic_build_hook():
        raise NotImplementedError(
            "Multi-worker training with nsladv overrides keras.Model._maybe_symbolic_build (keras-team/keras#20585; "
            f"Keras 3.x, tested with 3.15), which this Keras lacks. Installed: keras {keras.__version__}. "
            "One process (one or more devices) still works."
        )


def symbolic_build(model, data_batch):
    """Keras' own build of a model's metrics and optimizer from one batch."""
    model._symbolic_build(data_batch=data_batch)


# BackupAndRestore -------------------------------------------------------------------------


def backup_save_hook_exists():
    """Whether `BackupAndRestore` still saves through `_save_model` (what a read-only worker overrides)."""
    return hasattr(keras.callbacks.BackupAndRestore, "_save_model")


# Inputs --------------------------------------------------------------------------------


def input_structure(model):
    """A functional model's input structure (a dict, list or tensor), or None when it has none to tell."""
    try:
        return model.input
    except (AttributeError, ValueError):
        return None


def averaged_variables(optimizer):
    """(the trainable variables, their moving averages) of an optimizer built with `use_ema=True`; the averages are
    empty before its first step (Keras keeps both lists privately, in the same order)."""
    return (
        list(getattr(optimizer, "_trainable_variables", [])),
        list(getattr(optimizer, "_model_variables_moving_average", None) or []),
    )


def is_graph_network(model):
    """Whether a model is sequential or functional (its layers can be cloned one by one), not subclassed."""
    if isinstance(model, keras.Sequential):
        return True
    try:
        from keras.src.models.functional import Functional
    except ImportError:  # A Keras that moved it: the public class name still tells.
        return type(model).__name__ == "Functional"
    return type(model) is Functional
