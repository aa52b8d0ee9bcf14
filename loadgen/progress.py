"""The live progress line: redrawn in place on a terminal, one line every few seconds otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

BAR_WIDTH = 32
TTY_INTERVAL_S = 0.2
PLAIN_INTERVAL_S = 5.0


class TextStream(Protocol):
    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


@dataclass(frozen=True)
class ProgressSnapshot:
    """Counts of completed messages so far, and how long the run has been going."""

    succeeded: int
    failed: int
    elapsed_s: float

    @property
    def sent(self) -> int:
        return self.succeeded + self.failed


def _duration_text(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def _bar(fraction: float, width: int = BAR_WIDTH) -> str:
    filled = int(round(max(0.0, min(fraction, 1.0)) * width))
    return "█" * filled + "░" * (width - filled)


def stream_is_tty(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False


class ProgressRenderer:
    """Draws the progress of a run of `total` messages or of `duration_s` seconds onto `stream`."""

    def __init__(
        self,
        stream: TextStream,
        *,
        total: int | None = None,
        duration_s: float | None = None,
        interval_s: float | None = None,
        enabled: bool = True,
    ) -> None:
        self.stream = stream
        self.total = total
        self.duration_s = duration_s
        self.tty = stream_is_tty(stream)
        self.interval_s = (
            interval_s if interval_s is not None else (TTY_INTERVAL_S if self.tty else PLAIN_INTERVAL_S)
        )
        self.enabled = enabled
        self._last_drawn_at: float | None = None
        self._width = 0

    def line(self, snapshot: ProgressSnapshot) -> str:
        """The progress line for `snapshot`, without a line ending."""
        rate = snapshot.sent / snapshot.elapsed_s if snapshot.elapsed_s > 0 else 0.0
        counts = f"Rate: {rate:,.0f} msg/s | Success: {snapshot.succeeded:,} | Failed: {snapshot.failed:,}"
        if self.total:
            fraction = snapshot.sent / self.total
            remaining = (self.total - snapshot.sent) / rate if rate > 0 else None
            eta = _duration_text(remaining) if remaining is not None else "?"
            head = f"[{_bar(fraction)}] {snapshot.sent:,}/{self.total:,} ({fraction * 100:.1f}%)"
            return f"{head} | {counts} | ETA: {eta}"
        if self.duration_s:
            fraction = snapshot.elapsed_s / self.duration_s
            eta = _duration_text(self.duration_s - snapshot.elapsed_s)
            head = (
                f"[{_bar(fraction)}] {_duration_text(snapshot.elapsed_s)}/{_duration_text(self.duration_s)} "
                f"({min(fraction, 1.0) * 100:.1f}%) | Sent: {snapshot.sent:,}"
            )
            return f"{head} | {counts} | ETA: {eta}"
        return f"Sent: {snapshot.sent:,} | {counts} | Elapsed: {_duration_text(snapshot.elapsed_s)}"

    def update(self, snapshot: ProgressSnapshot, *, now: float) -> bool:
        """Draw `snapshot` if the last drawing is at least one interval old; say whether it drew."""
        if not self.enabled:
            return False
        if self._last_drawn_at is not None and now - self._last_drawn_at < self.interval_s:
            return False
        self._last_drawn_at = now
        self._draw(snapshot)
        return True

    def finish(self, snapshot: ProgressSnapshot) -> None:
        """Draw the final state; on a terminal, end the line that was being redrawn."""
        if not self.enabled:
            return
        self._draw(snapshot)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, snapshot: ProgressSnapshot) -> None:
        text = self.line(snapshot)
        if self.tty:
            # Carriage return and erase-to-end-of-line: the line is redrawn where it stands.
            self.stream.write(f"\r{text}\x1b[K")
        else:
            self.stream.write(f"{text}\n")
        self.stream.flush()
