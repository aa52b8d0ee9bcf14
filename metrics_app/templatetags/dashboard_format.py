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
def decimal(value: object) -> str:
    """One decimal below 100, whole numbers (with separators) from 100: "7.5", "1,235"."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    return f"{number:,.0f}" if number >= 100 else f"{number:,.1f}"


@register.filter
def ms(value: object) -> str:
    """Milliseconds, as `decimal` shows them, with the unit: "7.5 ms", "1,235 ms"."""
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    return f"{decimal(value)} ms"


@register.filter
def clock(value: datetime | None) -> str:
    """A UTC time of day to the millisecond: "15:53:22.418"."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]
