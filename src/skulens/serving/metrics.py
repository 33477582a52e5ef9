"""Prometheus metrics, kept in a registry per app so several apps (tests, embedding) never collide."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "skulens_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "skulens_http_request_duration_seconds",
            "time to answer a request",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("skulens_errors", "requests answered with an error, by error code", ["code"], registry=r)
        self.batch_size = Histogram(
            "skulens_inference_batch_size", "images per inference batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "skulens_inference_duration_seconds", "time of one inference batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.embed_batch_size = Histogram(
            "skulens_embedding_batch_size", "images per search-embedding batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.embed_inference = Histogram(
            "skulens_embedding_duration_seconds",
            "time of one search-embedding batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("skulens_batch_queue_depth", "images waiting for the model", registry=r)
        self.jobs = Counter("skulens_jobs", "background jobs by final state", ["kind", "status"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
