"""The training precision: chosen from the hardware (devices mocked), overridable, and float32 copies that are exact."""

import keras
import numpy as np
import pytest

from nsladv import precision
from nsladv.errors import SettingsError
from nsladv.precision import Hardware

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})


@pytest.mark.parametrize(
    "hardware, expected, why",
    [
        (Hardware(tpus=8), "bfloat16", "8 TPU core(s)"),
        (Hardware(gpu_capabilities=((8, 0),)), "bfloat16", "capability 8.0"),
        (Hardware(gpu_capabilities=((9, 0), (8, 6))), "bfloat16", "9.0, 8.6"),
        (Hardware(gpu_capabilities=((7, 5),)), "float32", "native from 8.0"),
        (Hardware(gpu_capabilities=((8, 0), (7, 0))), "float32", "8.0, 7.0"),  # every GPU must have it
        (Hardware(cpu_flags=AVX2_ONLY | {"avx512f", "avx512_bf16"}), "bfloat16", "AVX512_BF16"),
        (Hardware(cpu_flags=AVX2_ONLY | {"amx_bf16", "amx_tile"}), "bfloat16", "AMX_BF16"),
        (Hardware(cpu_flags=AVX2_ONLY), "float32", "would emulate"),
        (Hardware(cpu_flags=AVX2_ONLY | {"avx512_bf16"}, onednn=False), "float32", "TF_ENABLE_ONEDNN_OPTS=0"),
        # A GPU decides over the CPU's flags, whatever they are.
        (Hardware(gpu_capabilities=((7, 0),), cpu_flags=frozenset({"avx512_bf16"})), "float32", "7.0"),
    ],
)
def test_auto_picks_bfloat16_only_where_the_hardware_computes_it_natively(hardware, expected, why):
    chosen = precision.choose("auto", hardware)
    assert chosen.name == expected and why in chosen.reason
    assert chosen.policy == {"float32": "float32", "bfloat16": "mixed_bfloat16"}[expected]


@pytest.mark.parametrize("asked", ["float32", "bfloat16"])
def test_an_explicit_precision_overrides_the_hardware(asked):
    for hardware in (Hardware(tpus=8), Hardware(cpu_flags=AVX2_ONLY)):
        assert precision.choose(asked, hardware).name == asked


def test_an_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(SettingsError, match=r"among auto, float32, bfloat16. Received: 'mixed_float16'"):
        precision.choose("mixed_float16")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: test\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert precision.cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert precision.cpu_flags(tmp_path / "missing") == frozenset()


def test_this_machines_choice_agrees_with_its_flags():
    chosen = precision.choose("auto")
    hardware = Hardware.detect()
    if not hardware.tpus and not hardware.gpu_capabilities:
        native = bool({"avx512_bf16", "amx_bf16"} & hardware.cpu_flags) and hardware.onednn
        assert chosen.name == ("bfloat16" if native else "float32")


def cnn():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def test_policy_scope_builds_in_the_precision_and_restores_keras_policy():
    with precision.policy_scope("bfloat16"):
        model = cnn()
    assert keras.config.dtype_policy().name == "float32"
    assert precision.of_model(model) == "bfloat16"
    assert all(w.dtype == "float32" for w in model.weights)  # mixed precision keeps float32 variables


def test_a_float32_copy_has_the_same_weights_and_computes_in_float32():
    with precision.policy_scope("bfloat16"):
        model = cnn()
    copy = precision.float32_copy(model)
    assert copy is not model and precision.of_model(copy) == "float32"
    for a, b in zip(model.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32)
    out = copy(x)
    assert out.dtype == "float32"
    np.testing.assert_allclose(np.asarray(out), np.asarray(model(x), np.float32), atol=0.05)
    plain = cnn()
    assert precision.float32_copy(plain) is plain  # nothing to copy


def test_a_sequential_model_changes_precision_too():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    copy = precision.in_precision(model, "bfloat16")
    assert precision.of_model(copy) == "bfloat16" and copy.inputs[0].dtype == "float32"


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


def test_a_subclassed_model_cannot_change_precision_and_says_how_to_build_it():
    model = Subclassed(name="mine")
    model(np.zeros((1, 4), np.float32))
    with pytest.raises(SettingsError, match=r"set_dtype_policy\('mixed_bfloat16'\).*Received: Subclassed 'mine'"):
        precision.in_precision(model, "bfloat16")
    assert precision.float32_copy(model) is model
