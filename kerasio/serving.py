"""TF Serving's side of the contract: warmup records and REST request bodies.

The TF Serving binary is not installed here; kerasio writes what it consumes
with its own protos (``tensorflow-serving-api``) and tests that contract with
TensorFlow's tools (see ``tests/test_serving_contract.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .runtime import require

__all__ = ["write_warmup", "read_warmup", "rest_body", "WARMUP_PATH", "MAX_WARMUP_RECORDS"]

WARMUP_PATH = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's own limit on warmup records


def write_warmup(version_dir: Path, rows: np.ndarray, *, model_name: str = "kerasio", limit: int = 100) -> int:
    """Write ``assets.extra/tf_serving_warmup_requests`` as TFRecord ``PredictionLog``s.

    One record per reference row (at most ``limit``, capped at 1,000), each a
    ``PredictRequest`` to ``serving_default`` with the ``features`` input.
    Returns the number of records written.
    """
    tf = require("tensorflow", "writing TF Serving warmup requests")
    predict_pb2 = require("tensorflow_serving.apis.predict_pb2", "writing TF Serving warmup requests")
    log_pb2 = require("tensorflow_serving.apis.prediction_log_pb2", "writing TF Serving warmup requests")
    count = min(len(rows), limit, MAX_WARMUP_RECORDS)
    path = Path(version_dir) / WARMUP_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in rows[:count]:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = "serving_default"
            request.inputs["features"].CopyFrom(tf.make_tensor_proto(row[None, :].astype(np.float32)))
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


def rest_body(rows: np.ndarray, *, signature: str = "serving_default", columnar: bool = False) -> dict[str, Any]:
    """The JSON body of ``POST /v1/models/<name>:predict`` for ``rows``.

    Row format: ``{"signature_name": ..., "instances": [{"features": [...]}, ...]}``.
    Columnar format (``columnar=True``): ``{"signature_name": ..., "inputs": {"features": [[...], ...]}}``.
    """
    rows = np.asarray(rows, dtype=np.float32)
    values = [[float(v) for v in row] for row in rows]
    if columnar:
        return {"signature_name": signature, "inputs": {"features": values}}
    return {"signature_name": signature, "instances": [{"features": row} for row in values]}
