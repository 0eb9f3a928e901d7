"""Request metrics in Prometheus' text format, under TF Serving's names.

TF Serving (tensorflow_serving/servables/tensorflow/util.cc) counts every
request as `/tensorflow/serving/request_count{model_name, status}` and times
the successful ones as `/tensorflow/serving/request_latency{model_name, API,
entrypoint}` in microseconds (buckets 10 * 1.8^k, 33 of them); its Prometheus
exporter (tensorflow_serving/util/prometheus_exporter.cc) writes the names
with ':' for '/'. Those two are served here, name for name, as sums over the
version and signature a request reached, which TF Serving's metrics do not
carry: `prometheus-client` keeps those in `nsladv_serving_requests_total` and
`nsladv_serving_request_latency_seconds` (TF Serving's buckets, in seconds).
The endpoint is on only when a monitoring config enables it (TF Serving's
`--monitoring_config_file`).
"""

import collections
import dataclasses
import pathlib
import re

from nsladv._extras import require

prometheus_client = require("prometheus_client", "serve")
HistogramMetricFamily = require("prometheus_client.core", "serve").HistogramMetricFamily
Metric = require("prometheus_client.core", "serve").Metric


DEFAULT_PATH = "/monitoring/prometheus/metrics"  # TF Serving's PrometheusExporter::kPrometheusPath
# monitoring::Buckets::Exponential(10, 1.8, 33): limits 10 * 1.8^i for i < 32, then +Inf.
LATENCY_BUCKETS_MICROS = tuple(10 * 1.8**i for i in range(32))


@dataclasses.dataclass(frozen=True)
class MonitoringConfig:
    """TF Serving's `MonitoringConfig`: whether and where Prometheus metrics are served."""

    enable: bool = True
    path: str = DEFAULT_PATH

    def __post_init__(self):
        if not self.path.startswith("/"):
            raise ValueError(f"The metrics path must start with '/'. Received: path={self.path!r}")


_ENTRY = re.compile(r"(\w+)\s*:\s*(\"[^\"]*\"|\w+)")


def read_monitoring_config(path):
    """The `MonitoringConfig` of a TF Serving `--monitoring_config_file` (text format)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No monitoring config file at {path}. Received: {str(path)!r}")
    text = re.sub(r"#.*", "", path.read_text())
    match = re.fullmatch(r"\s*prometheus_config\s*:?\s*\{(?P<body>[^}]*)\}\s*", text)
    if not match:
        raise ValueError(
            f'Cannot read {path}: expected `prometheus_config {{ enable: true, path: "{DEFAULT_PATH}" }}`. '
            f"Received: {text.strip()!r}"
        )
    fields = {}
    body = match.group("body")
    for name, value in _ENTRY.findall(body):
        if name == "enable" and value in ("true", "false"):
            fields["enable"] = value == "true"
        elif name == "path" and value.startswith('"'):
            fields["path"] = value.strip('"') or DEFAULT_PATH
        else:
            raise ValueError(f"Unknown or malformed field {name}: {value} in {path}. Expected `enable` and `path`.")
    if _ENTRY.sub("", body).replace(",", "").strip():
        raise ValueError(f"Cannot read {path}: stray text {_ENTRY.sub('', body).strip()!r} in prometheus_config.")
    return MonitoringConfig(enable=fields.get("enable", False), path=fields.get("path", DEFAULT_PATH))


class Metrics:
    """What the server served: counts by status and latencies, for Prometheus.

    One counter and one histogram (`prometheus-client`'s, by model, version,
    signature, API and entrypoint) hold everything; TF Serving's two metrics
    are their sums over version and signature, computed when scraped.
    """

    def __init__(self):
        self.registry = prometheus_client.CollectorRegistry()
        labels = ("model_name", "version", "signature_name", "API", "entrypoint", "status")
        self.requests = prometheus_client.Counter(
            "nsladv_serving_requests",
            "Requests by model, version, signature, API, entrypoint and status.",
            labels,
            registry=self.registry,
        )
        self.latency = prometheus_client.Histogram(
            "nsladv_serving_request_latency_seconds",
            "Wall time of successful requests by model, version, signature, API and entrypoint.",
            labels[:-1],
            buckets=[micros / 1e6 for micros in LATENCY_BUCKETS_MICROS],  # TF Serving's, in seconds
            registry=self.registry,
        )
        self.registry.register(_TFServingCollector(self))

    def record(self, *, model_name, api, entrypoint, status, seconds, version="", signature_name=""):
        """Counts one request (status: a TF Serving code name, "OK" for success)."""
        version = "" if version is None else str(version)
        self.requests.labels(model_name, version, signature_name, api, entrypoint, status).inc()
        if status == "OK":
            self.latency.labels(model_name, version, signature_name, api, entrypoint).observe(seconds)

    def count(self, model_name, status="OK"):
        """Requests to `model_name` answered with `status`, over every version, signature and API."""
        return int(self._counts()[model_name, status])

    def exposition(self):
        """The Prometheus text format (bytes)."""
        return prometheus_client.generate_latest(self.registry)

    def _counts(self):
        """{(model_name, status): requests}, summed over the other labels."""
        counts = collections.Counter()
        for family in self.requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["model_name"], sample.labels["status"]] += sample.value
        return counts

    def _latencies(self):
        """{(model_name, API, entrypoint): ([cumulative count per bucket, in bucket order], sum in seconds)}."""
        buckets, sums = {}, collections.Counter()
        for family in self.latency.collect():
            for sample in family.samples:
                key = (sample.labels["model_name"], sample.labels["API"], sample.labels["entrypoint"])
                if sample.name.endswith("_bucket"):
                    cell = buckets.setdefault(key, collections.Counter())
                    cell[float(sample.labels["le"])] += sample.value
                elif sample.name.endswith("_sum"):
                    sums[key] += sample.value
        return {key: ([cell[le] for le in sorted(cell)], sums[key]) for key, cell in buckets.items()}


class _TFServingCollector:
    """TF Serving's two request metrics under its exact names (no `_total` suffix: TF Serving writes none)."""

    def __init__(self, metrics):
        self.metrics = metrics

    def collect(self):
        name = ":tensorflow:serving:request_count"
        # "unknown" keeps the sample's name as TF Serving writes it; prometheus-client would append _total
        # to a counter's.
        family = Metric(name, "The total number of requests.", "unknown")
        for (model_name, status), n in sorted(self.metrics._counts().items()):
            family.add_sample(name, {"model_name": model_name, "status": status}, n)
        yield family
        histogram = HistogramMetricFamily(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            labels=["model_name", "API", "entrypoint"],
        )
        limits = [repr(limit) for limit in LATENCY_BUCKETS_MICROS] + ["+Inf"]
        for labels, (cumulative, seconds) in sorted(self.metrics._latencies().items()):
            histogram.add_metric(list(labels), list(zip(limits, cumulative)), seconds * 1e6)
        yield histogram
