"""What nsladv asks of a Keras model beyond its public API, in one place.

Every reach into Keras' private attributes goes through this module, guarded:
when a Keras release drops one, only the feature that needs it degrades, to
the safe choice.
"""

import keras

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
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


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
