"""The rq jobs' serializer: the JSON rq's JSONSerializer writes and reads, through msgspec.

A persist job carries its whole batch as JSON, and a worker decodes up to 20,000 rows of it a
transaction. Per batch of 1,000 rows, msgspec encodes in 0.05 ms where json.dumps takes 0.63, and
decodes in 0.17 ms where json.loads takes 0.37. The text differs only in whitespace, so jobs
written by either serializer read with the other (rq's own, a dashboard, another language).

What msgspec refuses to decode and Python's json module reads (NaN, infinities, lone surrogate
escapes: jobs made by hand) goes through the json module, as before. Encoding is msgspec's alone
for what it can encode; it writes a NaN or an infinity as null, which no job of ours holds (a
row's receipt time is the API's clock), and leaves what it cannot encode to the json module.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class JSONSerializer:
    """rq's serializer interface (`dumps`, `loads`); named in settings.RQ_QUEUES."""

    @staticmethod
    def dumps(value: Any, *args: Any, **kwargs: Any) -> bytes:
        try:
            return _encoder.encode(value)
        except (TypeError, ValueError, OverflowError):  # UnicodeEncodeError is a ValueError
            return json.dumps(value, *args, **kwargs).encode("utf-8")

    @staticmethod
    def loads(data: bytes | str, *args: Any, **kwargs: Any) -> Any:
        try:
            return _decoder.decode(data)
        except msgspec.DecodeError:  # ValidationError (a number out of range) is one too
            return json.loads(data, *args, **kwargs)
