"""The admin lists, filters and searches messages and dead letters without counting every row."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from messages_app.admin import COUNT_CAP, EstimatedCountPaginator
from messages_app.models import DeadLetter, Message
from messages_app.partitions import uuid7_at
from messages_app.services import messages_persist

pytestmark = pytest.mark.django_db

MESSAGES_URL = "/admin/messages_app/message/"
DEAD_LETTERS_URL = "/admin/messages_app/deadletter/"


def _message(content: str, *, channel_id: int = 1, age: timedelta = timedelta(0)) -> Message:
    created = datetime.now(tz=UTC) - age
    return Message.objects.create(
        # As the API mints them: a UUIDv7 of the receipt time (the date filter relies on it).
        id=uuid7_at(created),
        user_id=1,
        channel_id=channel_id,
        content=content,
        created_at=created,
        inserted_at=created,
    )


def _many(count: int, *, channel_id: int = 1) -> None:
    now = time.time()
    messages_persist(batch=[[str(uuid.uuid4()), 1, channel_id, f"bulk {i}", now] for i in range(count)])


def _listed(response: Any) -> list[Any]:
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def test_message_changelist_renders_for_staff(admin_client: Client) -> None:
    _message("hello from the admin", channel_id=4)
    response = admin_client.get(MESSAGES_URL)
    assert response.status_code == 200
    assert b"hello from the admin" in response.content


def test_message_changelist_is_refused_to_anonymous_users(client: Client) -> None:
    response = client.get(MESSAGES_URL)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_message_changelist_shortens_long_content(admin_client: Client) -> None:
    _message("x" * 500)
    response = admin_client.get(MESSAGES_URL)
    assert ("x" * 79 + "…").encode() in response.content
    assert ("x" * 81).encode() not in response.content


def test_messages_cannot_be_added_by_hand(admin_client: Client) -> None:
    assert admin_client.get(MESSAGES_URL + "add/").status_code == 403
    assert admin_client.get(DEAD_LETTERS_URL + "add/").status_code == 403


def test_channel_filter_offers_present_channels_and_filters_by_one(admin_client: Client) -> None:
    for channel_id in (3, 3, 8, 15):
        _message(f"in channel {channel_id}", channel_id=channel_id)
    response = admin_client.get(MESSAGES_URL)
    channel_filter = next(spec for spec in response.context["cl"].filter_specs if spec.title == "channel")
    assert [value for value, _label in channel_filter.lookup_choices] == ["3", "8", "15"]

    filtered = _listed(admin_client.get(MESSAGES_URL, {"channel_id": "3"}))
    assert [message.channel_id for message in filtered] == [3, 3]


def test_date_filter_keeps_recent_messages(admin_client: Client) -> None:
    _message("today")
    _message("last month", age=timedelta(days=40))
    changelist = admin_client.get(MESSAGES_URL).context["cl"]
    date_filter = next(spec for spec in changelist.filter_specs if spec.title == "created at")
    links = {choice["display"]: choice["query_string"] for choice in date_filter.choices(changelist)}
    for label in ("Today", "Past 7 days", "This month"):
        listed = _listed(admin_client.get(MESSAGES_URL + links[label]))
        assert [message.content for message in listed] == ["today"], label
    assert len(_listed(admin_client.get(MESSAGES_URL + links["Any date"]))) == 2


def test_search_finds_messages_by_content(admin_client: Client) -> None:
    _message("the deploy went fine")
    _message("lunch anyone?")
    _message("DEPLOY again")
    found = _listed(admin_client.get(MESSAGES_URL, {"q": "deploy"}))
    assert sorted(message.content for message in found) == ["DEPLOY again", "the deploy went fine"]


def test_dead_letter_changelist_renders_and_searches_errors(admin_client: Client) -> None:
    kept = uuid.uuid4()
    DeadLetter.objects.create(message_id=kept, payload={"content": "a\\x00b"}, error="NUL byte", job_id="j1")
    DeadLetter.objects.create(message_id=uuid.uuid4(), payload={}, error="value out of range", job_id="j2")
    response = admin_client.get(DEAD_LETTERS_URL)
    assert response.status_code == 200
    assert str(kept).encode() in response.content
    found = _listed(admin_client.get(DEAD_LETTERS_URL, {"q": "NUL"}))
    assert [letter.message_id for letter in found] == [kept]


def test_paginator_counts_an_unfiltered_big_table_from_statistics() -> None:
    _many(COUNT_CAP + 200)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE messages")
    # Rows deleted after ANALYZE: the estimate still says COUNT_CAP + 200, an exact COUNT would not.
    Message.objects.filter(pk__in=Message.objects.values("pk")[:150]).delete()
    with CaptureQueriesContext(connection) as queries:
        count = EstimatedCountPaginator(Message.objects.all(), 50).count
    assert count == COUNT_CAP + 200
    assert not any("COUNT(" in query["sql"].upper() for query in queries.captured_queries)


def test_paginator_caps_a_filtered_count_instead_of_counting_everything() -> None:
    _many(COUNT_CAP + 50, channel_id=5)
    _many(20, channel_id=6)
    with CaptureQueriesContext(connection) as queries:
        capped = EstimatedCountPaginator(Message.objects.filter(channel_id=5), 50).count
    assert capped == COUNT_CAP + 1
    (count_sql,) = [query["sql"] for query in queries.captured_queries if "COUNT(" in query["sql"].upper()]
    assert re.search(rf"LIMIT {COUNT_CAP + 1}\b", count_sql)
    assert EstimatedCountPaginator(Message.objects.filter(channel_id=6), 50).count == 20


def test_paginator_counts_a_small_table_exactly() -> None:
    _many(30)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE messages")
    assert EstimatedCountPaginator(Message.objects.all(), 50).count == 30


def test_changelist_of_a_big_table_never_runs_an_unbounded_count(admin_client: Client) -> None:
    _many(COUNT_CAP + 10, channel_id=2)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE messages")
    for params in ({}, {"channel_id": "2"}, {"q": "bulk 1"}):
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(MESSAGES_URL, params)
        assert response.status_code == 200
        counts = [query["sql"] for query in queries.captured_queries if "COUNT(" in query["sql"].upper()]
        unbounded = [sql for sql in counts if "messages" in sql and "LIMIT" not in sql.upper()]
        assert not unbounded, (params, unbounded)
