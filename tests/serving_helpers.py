"""What the serving tests share: a tiny classifier and plain HTTP requests to a running server."""

import http.client
import json

import keras

SHAPE = (4, 4, 1)


def classifier(seed):
    """A 4x4x1 -> 3 logits model, the same for the same seed."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    h = keras.layers.Dense(8, activation="relu")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def http_request(server, method, path, body=None, headers=None):
    """(status, payload) of one plain HTTP request; a dict or list body is sent as JSON, a JSON reply decoded."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    host, port = server.rest_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    if response.getheader("Content-Type", "").startswith("application/json"):
        return response.status, json.loads(data)
    return response.status, data.decode()
