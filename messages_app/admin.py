"""Admin for messages and dead letters, built to stay fast on tens of millions of rows."""

from __future__ import annotations

import json
import math
from datetime import UTC
from typing import Any

from django.contrib import admin
from django.core.paginator import EmptyPage, Page, PageNotAnInteger, Paginator
from django.db import connection
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.dateparse import parse_datetime
from django.utils.functional import cached_property

from messages_app.models import DeadLetter, Message
from messages_app.partitions import id_range_for_received

# Up to this many rows a list is counted exactly; past it the count is the planner's estimate.
# Finding out which side of the line a list is on reads at most EXACT_COUNT_LIMIT + 1 index
# entries (a few milliseconds), whatever the size of the table.
EXACT_COUNT_LIMIT = 10_000


def _about(rows: int) -> str:
    """Round an estimate to two significant figures, so that it does not read as exact."""
    for size, word in ((1_000_000_000, "billion"), (1_000_000, "million")):
        if rows >= size:
            return f"about {rows / size:.2g} {word}"
    return f"about {round(rows, 1 - len(str(rows))):,}"


class EstimatedCountPaginator(Paginator):  # type: ignore[type-arg]
    """Counts exactly when the list is small, estimates when it is big, and never hides a row.

    A COUNT(*) over ten million rows takes seconds on every page view, so past
    EXACT_COUNT_LIMIT rows (found out with a count capped by a LIMIT) the count is
    PostgreSQL's own estimate for the query: EXPLAIN's row figure (the "Count estimate"
    recipe of the PostgreSQL wiki for arbitrary queries). Unlike pg_class.reltuples
    alone, the planner scales the rows per page of the last ANALYZE by the table's
    current size, so a bulk load shows up before autovacuum gets to it, and it applies
    the filters' selectivity.

    An estimate can still be short of the truth (rows narrower than at the last
    ANALYZE, a search the planner misjudges), and Django's paginator refuses pages past
    its count: rows past the estimate would be unreachable. So in estimate mode this
    paginator serves any page that has rows, and every page it serves teaches it: a
    full page followed by another row raises the count past that page (its link to
    the next page is shown), a short page gives the exact count and the end of the
    list. Only a page past the last row is refused. Big-table admins commonly swap
    COUNT(*) for an estimate; the open-ended paging is what keeps a low estimate from
    hiding rows, and `count_text` says "about ... (estimate)" so that a guess never
    reads as a count.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What the pages served so far proved: rows known to exist, and the exact count
        # once a short page has shown the end of the list.
        self._rows_seen = 0
        self._rows_in_all: int | None = None

    @cached_property
    def _measured(self) -> tuple[int, bool]:
        """The list's row count and whether it is exact, before any page is read."""
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count, True
        capped = queryset.order_by()[: EXACT_COUNT_LIMIT + 1].count()
        if capped <= EXACT_COUNT_LIMIT:
            return capped, True
        plan = json.loads(queryset.order_by().explain(format="json"))
        return max(capped, int(plan[0]["Plan"]["Plan Rows"])), False

    @property
    def count_is_exact(self) -> bool:
        return self._measured[1] or self._rows_in_all is not None

    @property
    def count(self) -> int:
        if self._rows_in_all is not None:
            return self._rows_in_all
        return max(self._measured[0], self._rows_seen)

    @property
    def num_pages(self) -> int:
        if self.count == 0 and not self.allow_empty_first_page:
            return 0
        return math.ceil(max(1, self.count - self.orphans) / self.per_page)

    @property
    def count_text(self) -> str:
        """The count for people: "1,234 messages", "about 1.2 million messages (estimate)"."""
        singular, plural = "row", "rows"
        if isinstance(self.object_list, QuerySet):
            meta = self.object_list.model._meta
            singular, plural = str(meta.verbose_name), str(meta.verbose_name_plural)
        if self.count_is_exact:
            return f"{self.count:,} {singular if self.count == 1 else plural}"
        measured, _exact = self._measured
        if self.count > measured or measured <= EXACT_COUNT_LIMIT + 1:
            # The planner's figure is already known to be short: say only what is certain.
            return f"more than {self.count - 1:,} {plural}"
        return f"{_about(self.count)} {plural} (estimate)"

    def validate_number(self, number: int | float | str) -> int:
        if self.count_is_exact:
            return super().validate_number(number)
        # Past an estimate a page may well exist: page() finds out by reading it.
        try:
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            page_number = int(number)
        except (TypeError, ValueError) as error:
            raise PageNotAnInteger(self.error_messages["invalid_page"]) from error
        if page_number < 1:
            raise EmptyPage(self.error_messages["min_page"])
        return page_number

    def page(self, number: int | str) -> Page:  # type: ignore[type-arg]
        if self.count_is_exact:
            return super().page(number)
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        # One row more than a page tells whether another page follows.
        rows = list(self.object_list[bottom : bottom + self.per_page + 1])
        if not rows and number > 1:
            raise EmptyPage(self.error_messages["no_results"])
        if len(rows) > self.per_page:
            self._rows_seen = max(self._rows_seen, bottom + len(rows))
            rows = rows[: self.per_page]
        else:
            self._rows_in_all = bottom + len(rows)
        return Page(rows, number, self)


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
# ModelAdmin and Paginator are generic only in django-stubs; at run time they cannot be subscripted.
class MessageAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("id", "channel_id", "user_id", "short_content", "created_at", "inserted_at")
    list_filter = (ChannelFilter, ("created_at", ReceivedFilter))
    search_fields = ("content",)
    date_hierarchy = None
    paginator = EstimatedCountPaginator
    # The unfiltered total would be one more full COUNT on every filtered view.
    show_full_result_count = False
    # "Show counts" would count every channel and date choice over the whole table on each
    # view, and a COUNT ... FILTER cannot be capped like the list's own count: on a big table
    # that is seconds a view, so facets are never offered here.
    show_facets = admin.ShowFacets.NEVER
    # "Select all" would offer an action over an estimated number of rows, and the delete
    # confirmation page lists every selected row; the Reset button empties the table instead.
    actions = None
    list_per_page = 50
    readonly_fields = ("id", "user_id", "channel_id", "content", "created_at", "inserted_at")

    @admin.display(description="content")
    def short_content(self, obj: Message) -> str:
        return obj.content if len(obj.content) <= 80 else obj.content[:79] + "…"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("message_id", "error", "job_id", "created_at")
    search_fields = ("message_id", "error")
    readonly_fields = ("message_id", "payload", "error", "job_id", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
