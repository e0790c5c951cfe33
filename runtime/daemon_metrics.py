"""Prometheus metrics of the daemon (`GET /metrics`), in a registry of its own.

A registry per daemon (not prometheus-client's global one) so tests can run several daemons in
one process and a metric is never registered twice.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

STATES = ("starting", "idle", "running", "stopping", "estopped", "fault", "shutting_down")


class DaemonMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.state = Gauge("aimg_state", "1 for the daemon's current state", ["state"], registry=r)
        self.plan_latency = Histogram(
            "aimg_plan_latency_seconds",
            "Camera capture to plan ready",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0),
            registry=r,
        )
        self.plans = Counter("aimg_plans", "Plans made", registry=r)
        self.tasks = Counter("aimg_tasks", "Tasks ended, by outcome", ["outcome"], registry=r)
        self.safety = Counter("aimg_safety_events", "Safety events, by kind", ["kind"], registry=r)
        self.restarts = Counter(
            "aimg_process_restarts", "Child processes restarted", ["process"], registry=r
        )
        self.alive = Gauge("aimg_process_alive", "1 if the process runs", ["process"], registry=r)
        self.jitter = Gauge(
            "aimg_servo_jitter_p99_ms", "Servo tick start jitter, p99 over 10 s", registry=r
        )
        self.overruns = Gauge("aimg_servo_overruns", "Servo ticks over their period", registry=r)
        self.frame_age = Gauge("aimg_frame_age_seconds", "Age of the newest frame", registry=r)
        self.requests = Counter(
            "aimg_http_requests", "API requests, by route and status", ["route", "code"], registry=r
        )
        self.episodes = Counter("aimg_episodes_recorded", "Episodes committed", registry=r)
        self.set_state("starting")

    def set_state(self, state: str) -> None:
        for name in STATES:
            self.state.labels(name).set(1.0 if name == state else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
