"""Process-local counters, rendered in the Prometheus text format."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Metric:
    name: str
    help: str
    kind: str  # "counter" or "gauge"
    value: int = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def dec(self, amount: int = 1) -> None:
        self.value -= amount


OPEN_STREAMS = Metric(
    "notify_open_streams", "Open event streams and long polls.", "gauge"
)
PUBLISHED = Metric(
    "notify_notifications_published_total", "Notifications published.", "counter"
)
DELIVERED = Metric(
    "notify_events_delivered_total", "Notifications written to streams.", "counter"
)
SLOW_DISCONNECTS = Metric(
    "notify_slow_client_disconnects_total",
    "Streams ended because the client could not keep up.",
    "counter",
)
REPLAYED = Metric(
    "notify_replayed_events_total",
    "Notifications sent from the database on resume.",
    "counter",
)
RECOVERED = Metric(
    "notify_recovered_events_total",
    "Notifications a server process read from the database to fill a gap.",
    "counter",
)
REVOKED = Metric(
    "notify_revoked_streams_total",
    "Streams ended because their credential stopped being valid.",
    "counter",
)
REFUSED = Metric(
    "notify_refused_streams_total",
    "Streams and long polls refused by the per-user cap.",
    "counter",
)
BROKER_RECONNECTS = Metric(
    "notify_broker_reconnects_total", "Broker connections re-established.", "counter"
)

ALL = (
    OPEN_STREAMS,
    PUBLISHED,
    DELIVERED,
    SLOW_DISCONNECTS,
    REPLAYED,
    RECOVERED,
    REVOKED,
    REFUSED,
    BROKER_RECONNECTS,
)


def render() -> str:
    lines: list[str] = []
    for metric in ALL:
        lines.append(f"# HELP {metric.name} {metric.help}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        lines.append(f"{metric.name} {metric.value}")
    return "\n".join(lines) + "\n"
