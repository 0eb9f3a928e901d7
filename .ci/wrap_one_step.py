"""CI's second job: the core install, on numpy 2, trains a wrapped model for one step (run in its own venv)."""

import keras
import numpy as np

import nsladv

assert int(np.__version__.split(".")[0]) >= 2, f"expected numpy 2, found {np.__version__}"
rng = np.random.default_rng(0)
x = rng.random((64, 8)).astype("float32")
y = (x[:, 0] > 0.5).astype("int64")
base = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
model = nsladv.wrap(base, epsilon=0.1, steps=3, clip_range=(0, 1), multiplier=1.0)
model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
before = [w.copy() for w in base.get_weights()]
loss = model.fit(x, y, batch_size=64, epochs=1, verbose=0).history["loss"][0]
assert any(not np.array_equal(a, b) for a, b in zip(before, base.get_weights())), "the step changed no weight"
print(f"numpy {np.__version__}: a wrapped model trained one step (loss {loss:.3f})")
