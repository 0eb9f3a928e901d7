"""Training precision: bfloat16 mixed precision where the hardware computes it fast, float32 elsewhere.

Keras' `mixed_bfloat16` policy computes layers in bfloat16 and keeps the
weights in float32. It pays off only where bfloat16 arithmetic is native:
TPUs, GPUs of compute capability 8.0 or more (Ampere and later), and CPUs
with AVX512_BF16 or AMX, which TensorFlow's oneDNN kernels use. Elsewhere
TensorFlow emulates it, and a step is several times slower than in float32
(docs/results.md has this project's measurements), so `choose("auto")`
picks float32 there.

The precision is for training only. Losses, the KL term and softmax are
computed in float32 (`nsladv.losses` casts), the weights and their moving
average are float32 variables, and attacks, the robustness monitor and the
export use a float32 copy of the model (`float32_copy`): robustness is
measured on the model that is shipped, at the precision it is served in.
"""

import contextlib
import dataclasses
import os
import pathlib

from nsladv.errors import SettingsError

PRECISIONS = ("auto", "float32", "bfloat16")

_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
_MIN_GPU_CAPABILITY = (8, 0)


@dataclasses.dataclass(frozen=True)
class Precision:
    """A chosen training precision: its name, Keras dtype policy and why it was chosen."""

    name: str
    reason: str

    @property
    def policy(self):
        """The Keras dtype policy that trains in this precision."""
        return _POLICIES[self.name]

    def to_dict(self):
        return {"training": self.name, "keras_policy": self.policy, "why": self.reason}


@dataclasses.dataclass(frozen=True)
class Hardware:
    """What the precision choice looks at: TPU cores, GPUs' compute capabilities and the CPU's flags."""

    tpus: int = 0
    gpu_capabilities: tuple = ()
    cpu_flags: frozenset = frozenset()
    onednn: bool = True

    @classmethod
    def detect(cls):
        """This machine's devices, as TensorFlow lists them, and the CPU's flags (Linux's /proc/cpuinfo)."""
        import tensorflow as tf

        capabilities = []
        for gpu in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(gpu)
            capabilities.append(tuple(details.get("compute_capability") or (0, 0)))
        return cls(
            # Physical devices only: listing logical ones starts TensorFlow's runtime, after which a
            # MultiWorkerMirroredStrategy can no longer be made ("Collective ops must be configured at program
            # startup"; tests/test_distribute.py).
            tpus=len(tf.config.list_physical_devices("TPU")),
            gpu_capabilities=tuple(capabilities),
            cpu_flags=cpu_flags(),
            # TensorFlow's x86 builds use oneDNN unless TF_ENABLE_ONEDNN_OPTS=0; without it no bfloat16 kernel is fast.
            onednn=os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip() not in ("0", "false", "False"),
        )


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags (empty where /proc/cpuinfo does not exist)."""
    try:
        text = pathlib.Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def choose(requested="auto", hardware=None):
    """The training precision: `requested` itself, or for "auto" the one the hardware computes fastest.

    Args:
        requested: "auto", "float32" or "bfloat16" (a `Precision` passes
            through).
        hardware: a `Hardware` (default: this machine's, `Hardware.detect()`).

    Returns:
        A `Precision`.
    """
    if isinstance(requested, Precision):
        return requested
    if requested not in PRECISIONS:
        raise SettingsError(f"Expected a precision among {', '.join(PRECISIONS)}. Received: {requested!r}")
    if requested != "auto":
        return Precision(requested, "asked for")
    hardware = Hardware.detect() if hardware is None else hardware
    if hardware.tpus:
        return Precision("bfloat16", f"{hardware.tpus} TPU core(s): bfloat16 is native")
    if hardware.gpu_capabilities:
        slow = [c for c in hardware.gpu_capabilities if tuple(c) < _MIN_GPU_CAPABILITY]
        shown = ", ".join(".".join(map(str, c)) for c in hardware.gpu_capabilities)
        if slow:
            return Precision("float32", f"GPU compute capability {shown}: bfloat16 is native from 8.0")
        return Precision("bfloat16", f"GPU compute capability {shown}: bfloat16 is native")
    found = [f for f in _CPU_FLAGS if f in hardware.cpu_flags]
    if found and hardware.onednn:
        return Precision("bfloat16", f"the CPU has {' and '.join(f.upper() for f in found)}")
    if found:
        return Precision("float32", "TF_ENABLE_ONEDNN_OPTS=0 turns off the CPU's bfloat16 kernels")
    return Precision("float32", "the CPU has neither AVX512_BF16 nor AMX: TensorFlow would emulate bfloat16")


@contextlib.contextmanager
def policy_scope(precision):
    """Builds the block's new layers in `precision` (a `Precision` or a name); restores Keras' policy after."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(choose(precision).policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def of_model(model):
    """The precision a model computes in: "float32", "bfloat16" or "float16" (its least precise layer's)."""
    from nsladv import _keras

    dtypes = {getattr(layer, "compute_dtype", "float32") for layer in [model, *_keras.sublayers(model)]}
    for name in ("float16", "bfloat16"):
        if name in dtypes:
            return name
    return "float32"


def in_precision(model, precision):
    """A copy of a functional or sequential `model` that computes in `precision`, with the same weights.

    Each layer is rebuilt from its config with the precision's dtype policy
    (inputs stay as they are). The weights are float32 variables under
    either policy, so they copy exactly.

    Raises:
        SettingsError: a subclassed model, whose layers the copy cannot reach.
    """
    import keras

    from nsladv import _keras

    precision = choose(precision)
    if of_model(model) == precision.name:
        return model
    if not _keras.is_graph_network(model):
        raise SettingsError(
            f"Expected a functional or sequential keras.Model to compute in {precision.name}: a subclassed model "
            f"keeps the precision it was built in. Build it under keras.config.set_dtype_policy("
            f"{precision.policy!r}), or train it in its own precision ({of_model(model)}). "
            f"Received: {type(model).__name__} {model.name!r}"
        )

    def rebuild(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        return layer.__class__.from_config({**layer.get_config(), "dtype": precision.policy})

    with policy_scope(precision):
        copy = keras.models.clone_model(model, clone_function=rebuild)
    copy.set_weights(model.get_weights())
    return copy


def float32_copy(model):
    """The model computing in float32 with the same weights: the model itself when it already does."""
    return in_precision(model, "float32")


def measurable(model):
    """(the model as attacks measure it, the precision it computes in).

    A float32 copy with the same weights where one can be made (see
    `float32_copy`); a subclassed model built in mixed precision is measured
    as it computes, and the precision says so.
    """
    try:
        return float32_copy(model), "float32"
    except SettingsError:
        return model, of_model(model)
