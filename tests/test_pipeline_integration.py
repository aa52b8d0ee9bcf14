"""The pipeline end to end: real server and worker subprocesses, real PostgreSQL and Redis."""

from __future__ import annotations

import httpx
import pytest

from messages_app.models import Message
from tests.livestack import LiveStack, wait_until

pytestmark = [pytest.mark.integration]


def test_every_acknowledged_message_becomes_exactly_one_row(live_stack: LiveStack) -> None:
    acknowledged: list[str] = []
    with httpx.Client(base_url=live_stack.url, timeout=10) as client:
        for index in range(40):
            response = client.post(
                "/messages", json={"user_id": index + 1, "channel_id": 3, "content": f"m{index}"}
            )
            assert response.status_code == 201, response.text
            acknowledged.append(response.json()["message_id"])
        batch = client.post(
            "/messages/batch",
            json={"messages": [{"user_id": 1, "channel_id": 4, "content": f"b{i}"} for i in range(300)]},
        )
        assert batch.status_code == 201, batch.text
        assert batch.json()["accepted"] == 300
        acknowledged.extend(batch.json()["message_ids"])

    wait_until(lambda: Message.objects.count() >= len(acknowledged), timeout_s=30, what="all rows")
    stored = list(Message.objects.values_list("id", flat=True))
    assert len(stored) == len(acknowledged) == 340
    assert sorted(str(i) for i in stored) == sorted(acknowledged)
