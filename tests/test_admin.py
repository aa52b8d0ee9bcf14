"""The admin lists, filters and searches messages and dead letters without counting every row,
and without hiding any: counts are exact when small, labelled estimates when big."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from messages_app.admin import EXACT_COUNT_LIMIT, EstimatedCountPaginator
from messages_app.models import DeadLetter, Message
from messages_app.partitions import uuid7_at

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


def _bulk(count: int, *, channel_id: int = 1, older_than: int = 0, content_chars: int = 12) -> None:
    """Insert count messages in one statement, "bulk <n>" aged older_than + n seconds (n from 1)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO messages (id, user_id, channel_id, content, created_at, inserted_at)
            SELECT gen_random_uuid(), 1, %(channel)s, rpad('bulk ' || n, %(chars)s, '.'),
                   now() - make_interval(secs => %(older)s + n), now()
            FROM generate_series(1, %(count)s) AS n
            """,
            {"channel": channel_id, "chars": content_chars, "older": older_than, "count": count},
        )


def _analyze() -> None:
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE messages")


def _page(admin_client: Client, page: int, **params: str) -> Any:
    return admin_client.get(MESSAGES_URL, {"p": str(page), **params})


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


def test_last_page_of_a_bulk_load_is_reachable_before_analyze(admin_client: Client) -> None:
    _bulk(30_001)
    _analyze()
    # Loaded after the statistics were taken, as a bulk load before autovacuum gets to it.
    _bulk(70_000, older_than=30_001)

    last = _page(admin_client, 2001)
    assert [message.content for message in _listed(last)] == ["bulk 70000".ljust(12, ".")]
    assert b'href="?p=2002"' not in last.content
    assert b'href="?p=2001"' in _page(admin_client, 2000).content


def test_pages_past_a_short_estimate_are_served_until_a_short_page_ends_the_list(
    admin_client: Client,
) -> None:
    # Statistics taken on wide rows, then narrow ones loaded: the planner's rows per page
    # are far too few for the new rows, so its estimate falls short of the truth.
    _bulk(12_000, content_chars=1500)
    _analyze()
    _bulk(40_010, older_than=12_000)

    first = admin_client.get(MESSAGES_URL)
    assert EXACT_COUNT_LIMIT < first.context["cl"].result_count < 30_000
    assert b"messages (estimate)" in first.content

    past_the_estimate = _page(admin_client, 600)
    assert len(_listed(past_the_estimate)) == 50
    assert b'href="?p=601"' in past_the_estimate.content
    assert b"more than 30,000 messages" in past_the_estimate.content

    last = _page(admin_client, 1041)
    listed = _listed(last)
    assert len(listed) == 10
    assert listed[-1].content == "bulk 40010".ljust(12, ".")
    assert b'href="?p=1042"' not in last.content
    assert b"52,010 messages" in last.content
    assert b"(estimate)" not in last.content

    beyond = _page(admin_client, 1042)
    assert beyond.status_code == 302
    assert beyond["Location"].endswith("?e=1")


def test_big_counts_are_labelled_as_estimates(admin_client: Client) -> None:
    _bulk(20_000, channel_id=2)
    _bulk(100, channel_id=3)
    _analyze()
    unfiltered = admin_client.get(MESSAGES_URL)
    assert b"about 20,000 messages (estimate)" in unfiltered.content
    assert b"20100" not in unfiltered.content
    filtered = admin_client.get(MESSAGES_URL, {"channel_id": "2"})
    assert b"about 20,000 messages (estimate)" in filtered.content
    assert b"10001" not in filtered.content


def test_small_counts_are_exact_even_when_statistics_say_otherwise(admin_client: Client) -> None:
    _bulk(EXACT_COUNT_LIMIT + 200)
    _analyze()
    # Most rows deleted after ANALYZE: the statistics still count them.
    Message.objects.filter(pk__in=Message.objects.values("pk")[:EXACT_COUNT_LIMIT]).delete()

    response = admin_client.get(MESSAGES_URL)
    assert response.context["cl"].result_count == 200
    assert b"200 messages" in response.content
    assert b"estimate" not in response.content
    assert len(_listed(_page(admin_client, 4))) == 50
    assert _page(admin_client, 5).status_code == 302

    _bulk(1, channel_id=9)
    alone = admin_client.get(MESSAGES_URL, {"channel_id": "9"}).content
    assert b"1 message" in alone
    assert b"1 messages" not in alone


def test_facets_are_never_offered_or_counted_for_messages(admin_client: Client) -> None:
    for channel_id in (3, 8):
        _message(f"in channel {channel_id}", channel_id=channel_id)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(MESSAGES_URL, {"_facets": "True"})
    assert response.status_code == 200
    assert not response.context["cl"].add_facets
    assert b"Show counts" not in response.content
    assert not [query for query in queries.captured_queries if "FILTER (WHERE" in query["sql"].upper()]


def test_paginator_caps_a_filtered_count_before_estimating_it() -> None:
    _bulk(EXACT_COUNT_LIMIT + 50, channel_id=5)
    _bulk(20, channel_id=6)
    with CaptureQueriesContext(connection) as queries:
        paginator = EstimatedCountPaginator(Message.objects.filter(channel_id=5), 50)
        assert paginator.count > EXACT_COUNT_LIMIT
    assert not paginator.count_is_exact
    (count_sql,) = [query["sql"] for query in queries.captured_queries if "COUNT(" in query["sql"].upper()]
    assert re.search(rf"LIMIT {EXACT_COUNT_LIMIT + 1}\b", count_sql)
    small = EstimatedCountPaginator(Message.objects.filter(channel_id=6), 50)
    assert small.count == 20
    assert small.count_is_exact


def test_changelist_of_a_big_table_never_runs_an_unbounded_count(admin_client: Client) -> None:
    _bulk(EXACT_COUNT_LIMIT + 10, channel_id=2)
    _analyze()
    for params in ({}, {"channel_id": "2"}, {"q": "bulk 1"}, {"p": "150"}):
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(MESSAGES_URL, params)
        assert response.status_code == 200
        counts = [query["sql"] for query in queries.captured_queries if "COUNT(" in query["sql"].upper()]
        unbounded = [sql for sql in counts if "messages" in sql and "LIMIT" not in sql.upper()]
        assert not unbounded, (params, unbounded)
