"""Admin for messages and dead letters, built to stay fast on tens of millions of rows."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.dateparse import parse_datetime
from django.utils.functional import cached_property

from messages_app.models import DeadLetter, Message
from messages_app.partitions import id_range_for_received

# Past this many rows a filtered count says "10,000+" (well, 10,001) instead of scanning them all.
COUNT_CAP = 10_000


class EstimatedCountPaginator(Paginator):
    """Counts from PostgreSQL's statistics when unfiltered, and caps filtered counts.

    A full COUNT(*) over ten million rows takes seconds on every page view.
    """

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        if not queryset.query.where:
            with connection.cursor() as cursor:
                # A partitioned table's own estimate is only refreshed by a manual ANALYZE (autovacuum
                # analyzes the partitions): add up its partitions' instead.
                cursor.execute(
                    "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_class c "
                    "WHERE c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = %s::regclass) "
                    "OR (c.oid = %s::regclass AND c.relkind <> 'p')",
                    [queryset.model._meta.db_table] * 2,
                )
                row = cursor.fetchone()
            if row and row[0] > COUNT_CAP:
                return int(row[0])
        return queryset.order_by()[: COUNT_CAP + 1].count()


class ChannelFilter(admin.SimpleListFilter):
    """Channels present in the table, found by a skip scan of the (channel_id, created_at) index."""

    title = "channel"
    parameter_name = "channel_id"
    _SKIP_SCAN = """
        WITH RECURSIVE channels AS (
            (SELECT channel_id FROM messages ORDER BY channel_id LIMIT 1)
            UNION ALL
            SELECT (SELECT m.channel_id FROM messages m WHERE m.channel_id > c.channel_id
                    ORDER BY m.channel_id LIMIT 1)
            FROM channels c WHERE c.channel_id IS NOT NULL
        )
        SELECT channel_id FROM channels WHERE channel_id IS NOT NULL LIMIT 200
    """

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        with connection.cursor() as cursor:
            cursor.execute(self._SKIP_SCAN)
            return [(str(row[0]), str(row[0])) for row in cursor.fetchall()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value and value.isdigit():
            return queryset.filter(channel_id=int(value))
        return queryset


class ReceivedFilter(admin.DateFieldListFilter):
    """The date filter on receipt time, plus the id range it implies: PostgreSQL then scans only
    the partitions of those days instead of every partition's created_at index."""

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        filtered = super().queryset(request, queryset)
        if filtered is None:
            return queryset
        bounds = []
        for name in (self.lookup_kwarg_since, self.lookup_kwarg_until):
            value = self.used_parameters.get(name)
            text = value[-1] if isinstance(value, list) and value else value
            moment = parse_datetime(str(text)) if text else None
            if moment is not None and moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            bounds.append(moment)
        return filtered.filter(**id_range_for_received(bounds[0], bounds[1]))


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "channel_id", "user_id", "short_content", "created_at", "inserted_at")
    list_filter = (ChannelFilter, ("created_at", ReceivedFilter))
    search_fields = ("content",)
    date_hierarchy = None
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 50
    readonly_fields = ("id", "user_id", "channel_id", "content", "created_at", "inserted_at")

    @admin.display(description="content")
    def short_content(self, obj: Message) -> str:
        return obj.content if len(obj.content) <= 80 else obj.content[:79] + "…"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ("message_id", "error", "job_id", "created_at")
    search_fields = ("message_id", "error")
    readonly_fields = ("message_id", "payload", "error", "job_id", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
