"""TF Serving's side of the contract: warmup records and REST request bodies.

The TF Serving binary is not installed here; kerasio writes what it consumes
with its own protos (``tensorflow-serving-api``) and tests that contract with
TensorFlow's tools (see ``tests/test_serving_contract.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kerasio.backends.environment import require

__all__ = ["write_warmup", "read_warmup", "rest_body", "WARMUP_PATH", "MAX_WARMUP_RECORDS"]

WARMUP_PATH = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's own limit on warmup records


def write_warmup(version_dir: Path, inputs: Mapping[str, np.ndarray], *, model_name: str = "kerasio",
                 limit: int = 100) -> int:
    """Write ``assets.extra/tf_serving_warmup_requests`` as TFRecord ``PredictionLog``s.

    One record per reference row (at most ``limit``, capped at 1,000), each a
    ``PredictRequest`` to ``serving_default`` carrying every named input of
    that row (strings as UTF-8 bytes, numbers in their own dtype). Returns the
    number of records written.
    """
    tf = require("tensorflow", "writing TF Serving warmup requests")
    predict_pb2 = require("tensorflow_serving.apis.predict_pb2", "writing TF Serving warmup requests")
    log_pb2 = require("tensorflow_serving.apis.prediction_log_pb2", "writing TF Serving warmup requests")
    rows = len(next(iter(inputs.values()))) if inputs else 0
    count = min(rows, limit, MAX_WARMUP_RECORDS)
    path = Path(version_dir) / WARMUP_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(count):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = "serving_default"
            for name, values in inputs.items():
                row = np.asarray(values[i:i + 1])
                if row.dtype.kind == "U":
                    row = np.char.encode(row, "utf-8")
                request.inputs[name].CopyFrom(tf.make_tensor_proto(row))
            log = log_pb2.PredictionLog(predict_log=log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return count


def read_warmup(version_dir: Path) -> list[Any]:
    """Parse the warmup file back into ``PredictionLog`` messages."""
    tf = require("tensorflow", "reading TF Serving warmup requests")
    log_pb2 = require("tensorflow_serving.apis.prediction_log_pb2", "reading TF Serving warmup requests")
    logs = []
    for record in tf.data.TFRecordDataset(str(Path(version_dir) / WARMUP_PATH)):
        log = log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs


def _json_values(array: np.ndarray) -> Any:
    """Nested lists for JSON; float32 values with the shortest repr that reads back as the same float32.

    (``6.42`` stored as float32 is 6.420000076293945 as a Python float; TF Serving parses ``6.42`` back into
    the very same float32, so the long form only adds noise.)
    """
    if array.dtype == np.float32 or array.dtype == np.float16:
        return array.astype(str).astype(np.float64).tolist()
    return array.tolist()


def rest_body(inputs: Mapping[str, np.ndarray], *, signature_name: str = "serving_default",
              columnar: bool = False) -> dict[str, Any]:
    """The JSON body of ``POST /v1/models/<name>:predict`` for named inputs (already coerced).

    Row format: ``{"signature_name": ..., "instances": [{name: value, ...}, ...]}``.
    Columnar format (``columnar=True``): ``{"signature_name": ..., "inputs": {name: [...], ...}}``.
    """
    lists = {name: _json_values(np.asarray(values)) for name, values in inputs.items()}
    if columnar:
        return {"signature_name": signature_name, "inputs": lists}
    rows = len(next(iter(lists.values()))) if lists else 0
    return {"signature_name": signature_name,
            "instances": [{name: values[i] for name, values in lists.items()} for i in range(rows)]}
