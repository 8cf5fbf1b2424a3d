"""Prometheus metrics of one server (own registry, so several apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mtlora_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("mtlora_request_seconds", "request latency", ["endpoint"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.batch_size = Histogram("mtlora_batch_size", "inputs per engine call", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.queue_depth = Gauge("mtlora_queue_depth", "inputs waiting for the engine", registry=self.registry)
        self.answers = Counter("mtlora_answers", "inputs answered, by task", ["task"], registry=self.registry)
        # By what the router read: with router.features cascade, the share read on the encoder is what
        # cascade_margin / cascade_confidence trade against routing's cost.
        self.routes = Counter("mtlora_routes", "inputs routed, by router and what it read", ["router", "reading"],
                              registry=self.registry)
        self.errors = Counter("mtlora_errors", "error responses, by type", ["type"], registry=self.registry)
