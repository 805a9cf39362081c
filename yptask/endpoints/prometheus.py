"""The node's figures as Prometheus metrics: one collector, read at scrape time.

`NodeCollector` is a prometheus_client custom collector: at each scrape it
reads what the node's parts already count (each task pool's counters and
`TaskMetrics`, the queue depths `delivery.load.Load` measures every second,
the journal thread's commit times, the cluster's membership, the timer
runner's fires) and yields metric families built from them. Nothing is
counted for Prometheus on the way of a message beyond those counters, and a
scrape makes no journal query: it costs a few dictionary reads per task.

Each node has a registry of its own (`node_registry`), never prometheus_client's
global one, so several nodes in one process each serve only their own figures.
The scrape runs on the node's event loop, where the pools, the membership and
the timer runner keep their state; the figures kept by other threads are read
under their locks. `GET /metrics` (`yptask.web.app`) serves `render(registry)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from yptask import __version__
from yptask.histogram import HistogramView

if TYPE_CHECKING:
    from yptask.cluster.mesh import Cluster
    from yptask.delivery.load import Load
    from yptask.delivery.running import RunningTasks
    from yptask.store.group_commit import JournalThread
    from yptask.timers.leader import TimerRunner

__all__ = ["CONTENT_TYPE", "NodeCollector", "ObservedNode", "node_registry", "render"]

CONTENT_TYPE = CONTENT_TYPE_LATEST  # the Prometheus text format
MEMBER_STATES = ("up", "suspect", "down")  # yptask_cluster_members{state}
_MEMBER_STATE = {"alive": "up", "suspect": "suspect", "down": "down"}  # MemberState values


class ObservedNode(Protocol):
    """What the collector reads of a node (`yptask.node.Node` provides it)."""

    @property
    def name(self) -> str: ...

    @property
    def running(self) -> RunningTasks: ...

    @property
    def load(self) -> Load: ...

    @property
    def cluster(self) -> Cluster | None: ...

    @property
    def timer_runner(self) -> TimerRunner | None: ...


class NodeCollector:
    """Yields one node's metrics at each scrape (a prometheus_client `Collector`)."""

    def __init__(self, node: ObservedNode, journal: JournalThread) -> None:
        self._node = node
        self._journal = journal

    def collect(self) -> Iterator[Metric]:
        node = self._node
        info = GaugeMetricFamily("yptask_node_info", "This node: its name and yptask version "
                                 "(always 1).", labels=["node", "version"])
        info.add_metric([node.name, __version__], 1)
        yield info
        yield from self._tasks()
        yield GaugeMetricFamily("yptask_journal_bytes", "Size of the journal's files on disk "
                                "(measured every second).", value=node.load.journal_bytes)
        commits = HistogramMetricFamily("yptask_journal_commit_seconds", "Time each group "
                                        "commit of the journal took (appends, or acks).")
        _add_histogram(commits, [], self._journal.commit_seconds())
        yield commits
        yield self._members()
        yield from self._timers()

    def _tasks(self) -> Iterator[Metric]:
        """The per-task families, a sample per task run on this node."""
        labels = ["task"]
        counters = {field: CounterMetricFamily(f"yptask_messages_{field}", text, labels=labels)
                    for field, text in _TASK_COUNTERS.items()}
        gauges = {field: GaugeMetricFamily(name, text, labels=labels)
                  for field, (name, text) in _TASK_GAUGES.items()}
        durations = HistogramMetricFamily(
            "yptask_handler_duration_seconds", "Time the task's handler took per message "
            "(handled or failed), since the task started here.", labels=labels)
        queued = self._node.load.queued
        for task, pool in sorted(self._node.running.pools.items()):
            figures = pool.metrics.cumulative()
            for field, value in (("handled", pool.handled), ("failed", pool.failed),
                                 ("retried", figures.retried),
                                 ("dead_lettered", figures.dead_lettered),
                                 ("expired", pool.expired)):
                counters[field].add_metric([task], value)
            for field, value in (("queued", queued.get(task, 0)),
                                 ("in_flight", pool.in_flight), ("workers", pool.live_workers)):
                gauges[field].add_metric([task], value)
            _add_histogram(durations, [task], figures.handler_seconds)
        yield from counters.values()
        yield from gauges.values()
        yield durations

    def _members(self) -> Metric:
        counts = dict.fromkeys(MEMBER_STATES, 0)
        counts["up"] = 1  # this node
        cluster = self._node.cluster
        if cluster is not None:
            for member in list(cluster.membership.members.values()):
                counts[_MEMBER_STATE[member.state.value]] += 1
        members = GaugeMetricFamily("yptask_cluster_members", "Nodes of the cluster as this "
                                    "node sees them, itself included, by state.",
                                    labels=["state"])
        for state in MEMBER_STATES:
            members.add_metric([state], counts[state])
        return members

    def _timers(self) -> Iterator[Metric]:
        runner = self._node.timer_runner
        fires = CounterMetricFamily("yptask_timer_fires", "Ticks of a timer this node cast "
                                    "(as the timer leader).", labels=["timer"])
        misses = CounterMetricFamily("yptask_timer_misses", "Ticks of a timer that came due "
                                     "and were not fired, by its misfire policy.",
                                     labels=["timer"])
        if runner is not None:
            for family, counts in ((fires, runner.fires), (misses, runner.misses)):
                for timer, count in sorted(counts.items()):
                    family.add_metric([timer], count)
        yield fires
        yield misses


_TASK_COUNTERS = {
    "handled": "Messages (and calls) the task's handlers handled on this node.",
    "failed": "Attempts that failed on this node (raised, timed out, or the worker died).",
    "retried": "Failed deliveries put back for another attempt.",
    "dead_lettered": "Failed deliveries dead-lettered: attempts spent, or undeliverable.",
    "expired": "Deliveries dead-lettered unhandled because their deadline had passed.",
}
_TASK_GAUGES = {
    "queued": ("yptask_messages_queued", "Deliveries journaled on this node waiting for the "
               "task (measured every second)."),
    "in_flight": ("yptask_messages_in_flight", "Deliveries and calls handed to the task's "
                  "workers here and not yet settled."),
    "workers": ("yptask_workers", "The task's worker processes running on this node."),
}


def _add_histogram(family: HistogramMetricFamily, labels: list[str],
                   view: HistogramView) -> None:
    buckets = [(repr(bound), float(count))
               for bound, count in zip(view.bounds, view.cumulative, strict=False)]
    buckets.append(("+Inf", float(view.count)))
    family.add_metric(labels, buckets, view.sum)


def node_registry(node: ObservedNode, journal: JournalThread) -> CollectorRegistry:
    """A registry of its own for `node`, holding its collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node, journal))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the Prometheus text format (served as `CONTENT_TYPE`)."""
    return generate_latest(registry)
