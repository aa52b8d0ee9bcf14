"""The jobs' serializer writes and reads the JSON rq's JSONSerializer does."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import pytest
from rq.serializers import JSONSerializer as RqJSONSerializer

from messages_app.serializers import JSONSerializer
from messages_app.services import PERSIST_JOB, BatchRow

ROWS = [BatchRow(str(uuid.uuid4()), 2**63 - 1, 1, 'héllo "quoted" \\ \n 😀', time.time()) for _ in range(3)]
# rq's own, untyped.
rq_dumps = cast(Callable[[Any], bytes], RqJSONSerializer.dumps)
rq_loads = cast(Callable[[bytes], Any], RqJSONSerializer.loads)
VALUES: list[Any] = [
    (PERSIST_JOB, None, (ROWS,), {}),
    {"rows": 3},
    [1.5, -0.0, 1e300, 0.1 + 0.2, 2**70, -(2**63), True, None, "", "\u2028"],
]


@pytest.mark.parametrize("value", VALUES, ids=["job", "meta", "scalars"])
def test_what_it_writes_rqs_serializer_reads_as_the_same(value: Any) -> None:
    assert rq_loads(JSONSerializer.dumps(value)) == rq_loads(rq_dumps(value))


@pytest.mark.parametrize("value", VALUES, ids=["job", "meta", "scalars"])
def test_what_rqs_serializer_writes_it_reads_as_the_same(value: Any) -> None:
    written = rq_dumps(value)
    assert JSONSerializer.loads(written) == rq_loads(written)


@pytest.mark.parametrize(
    "text",
    [b"[NaN]", b"[Infinity, -Infinity]", b"[1e400]", b'["\\ud800"]'],
    ids=["nan", "inf", "huge", "surrogate"],
)
def test_what_only_the_json_module_reads_is_read_by_it(text: bytes) -> None:
    """Jobs made by hand with Python's json module: msgspec refuses these, the json module reads them."""
    decoded = JSONSerializer.loads(text)
    expected = json.loads(text)
    assert len(decoded) == len(expected)
    for got, want in zip(decoded, expected, strict=True):
        assert got == want or (isinstance(got, float) and math.isnan(got) and math.isnan(want))


def test_what_msgspec_cannot_encode_is_written_by_the_json_module() -> None:
    value = ["lone \ud800 surrogate"]
    assert JSONSerializer.dumps(value) == json.dumps(value).encode()
    assert JSONSerializer.loads(JSONSerializer.dumps(value)) == value
