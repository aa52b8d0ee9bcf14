"""Numbers for people: thousands separators and sensible precision."""

from __future__ import annotations

from datetime import UTC, datetime

from django import template

register = template.Library()


@register.filter
def thousands(value: object) -> str:
    """1234567 -> "1,234,567"; anything that is not a number is shown as it is."""
    try:
        return f"{int(value):,}"  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return str(value)


@register.filter
def ms(value: object) -> str:
    """Milliseconds: one decimal below 100, whole numbers (with separators) above."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    return f"{number:,.0f} ms" if number >= 100 else f"{number:,.1f} ms"


@register.filter
def clock(value: datetime | None) -> str:
    """A UTC time of day to the millisecond: "15:53:22.418"."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]
