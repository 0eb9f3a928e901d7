import keras
import numpy as np
import pytest
from conftest import MODEL_KINDS
from conftest import SCCE
from conftest import toy_data

import nsladv


def test_epsilon_warmup_ramps_per_batch_then_holds():
    x, y = toy_data(128)
    model = nsladv.wrap(MODEL_KINDS["sequential"](), epsilon=0.1)
    model.compile(optimizer="sgd", loss=SCCE)
    seen = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(model.epsilon_scale))
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[nsladv.EpsilonWarmup(2), record])
    # 4 batches an epoch: 0, 1/8, ..., 7/8 over two epochs, then 1.
    np.testing.assert_allclose(seen, [i / 8 for i in range(8)] + [1.0] * 4, atol=1e-6)
    np.testing.assert_allclose(history.history["epsilon_scale"], [3 / 8, 7 / 8, 1.0], atol=1e-6)
    assert model.multiplier_scale == 1.0


def test_multiplier_warmup_from_a_start_value():
    warmup = nsladv.MultiplierWarmup(4, start=0.2)
    assert warmup.scale_at(0) == pytest.approx(0.2) and warmup.scale_at(2) == pytest.approx(0.6)
    assert warmup.scale_at(9) == 1.0 and nsladv.MultiplierWarmup(0).scale_at(0) == 1.0


def test_warmup_needs_an_adversarial_model():
    x, y = toy_data(32)
    model = MODEL_KINDS["sequential"]()
    model.compile(optimizer="sgd", loss=SCCE)
    with pytest.raises(TypeError, match=r"EpsilonWarmup drives an nsladv AdversarialModel's `epsilon_scale`"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[nsladv.EpsilonWarmup(2)])


def test_warmup_arguments():
    with pytest.raises(ValueError, match=r"`epochs` must be a number >= 0. Received: epochs=-1"):
        nsladv.EpsilonWarmup(-1)
    with pytest.raises(ValueError, match=r"`start` must be in \[0, 1\]. Received: start=2"):
        nsladv.EpsilonWarmup(1, start=2)
