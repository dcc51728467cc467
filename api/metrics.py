"""Prometheus metrics: HTTP requests counted here, job and queue figures read from Redis at scrape time.

Workers run elsewhere, so their numbers cannot live in this process's
counters: job counts come from RQ's registries and the frames counter from
the Redis key the workers increment (clipmorph.jobs.queue.FRAMES_COUNTER_KEY).
"""

from __future__ import annotations

import logging
import time

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from rq import Queue
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipmorph.jobs.queue import FRAMES_COUNTER_KEY

log = logging.getLogger(__name__)


class QueueCollector(Collector):
    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def collect(self):
        q = self.queue
        try:
            counts = {
                "queued": q.count,
                "running": q.started_job_registry.count,
                "finished": q.finished_job_registry.count,
                "failed": q.failed_job_registry.count,  # includes jobs stopped on request
                "cancelled": q.canceled_job_registry.count,
            }
            frames = int(q.connection.get(FRAMES_COUNTER_KEY) or 0)
        except redis.RedisError as e:
            log.warning("metrics: Redis unavailable: %s", e)
            return
        jobs = GaugeMetricFamily("clipmorph_jobs", "Jobs by state (RQ registries)", labels=["state"])
        for state, n in counts.items():
            jobs.add_metric([state], n)
        yield jobs
        yield GaugeMetricFamily("clipmorph_queue_length", "Jobs waiting for a worker", value=counts["queued"])
        yield CounterMetricFamily("clipmorph_frames_stylized", "Video frames stylized by all workers", value=frames)


class Metrics:
    """One registry per app, so several apps (tests) never clash in the global one."""

    def __init__(self, queue: Queue) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "clipmorph_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "clipmorph_http_request_seconds", "Time to the response's first byte", ["method", "route"],
            registry=self.registry,
        )  # fmt: skip
        self.registry.register(QueueCollector(queue))


class MetricsMiddleware:
    """Counts requests by route template (not raw path, which would make one series per job id)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                self.metrics.latency.labels(scope["method"], _route(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.requests.labels(scope["method"], _route(scope), str(status_code)).inc()


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"
