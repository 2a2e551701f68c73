"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own.

Each app gets its own ``CollectorRegistry`` (not prometheus_client's global one), so several
apps can live in one process (the tests create many). The HTTP counters come from
``RequestCounter``, an ASGI middleware; token, forward and latency figures from the batcher's
worker thread (prometheus_client metrics are thread-safe); queue, batch and KV-cache gauges
are read from the scheduler when scraped.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TPF_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, stats: Callable[[], dict]):
        """``stats()``: the batcher's structure sizes (``waiting``, ``running``, ``kv_used``...)."""
        r = self.registry = CollectorRegistry()
        self.requests = Counter("fastdllm_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("fastdllm_prompt_tokens", "Prompt tokens of the sequences processed",
                                     registry=r)
        self.completion_tokens = Counter("fastdllm_completion_tokens", "Generated tokens sent to clients",
                                         registry=r)
        self.finished = Counter("fastdllm_sequences_finished", "Sequences that ended, by finish reason",
                                ["reason"], registry=r)
        self.forward_passes = Counter("fastdllm_forward_passes", "Packed forward passes of the engine", registry=r)
        self.tokens_per_forward = Histogram(
            "fastdllm_tokens_per_forward", "Positions one sequence decoded in one decode forward "
            "(block diffusion fills several)", buckets=TPF_BUCKETS, registry=r)
        self.ttft = Histogram("fastdllm_time_to_first_token_seconds",
                              "From the request's arrival to its sequence's first token", buckets=LATENCY_BUCKETS,
                              registry=r)
        self.inter_token = Histogram("fastdllm_inter_token_latency_seconds",
                                     "Time per generated token after the first (a step's gap over its tokens)",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.request_seconds = Histogram("fastdllm_request_duration_seconds",
                                         "From a generation request's arrival to its last token",
                                         buckets=LATENCY_BUCKETS, registry=r)
        gauges = [("fastdllm_queue_length", "Sequences waiting to be admitted", "waiting"),
                  ("fastdllm_running_sequences", "Sequences in the running batch", "running"),
                  ("fastdllm_kv_cache_used_positions", "KV-cache positions reserved by running sequences", "kv_used"),
                  ("fastdllm_kv_cache_positions", "KV-cache positions in all", "kv_size"),
                  ("fastdllm_kv_cache_bytes", "Bytes held by the KV cache", "kv_cache_bytes")]
        for name, doc, key in gauges:
            Gauge(name, doc, registry=r).set_function(lambda key=key: stats()[key])

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestCounter:
    """ASGI middleware: counts every HTTP request by route template and status code."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # unless the app starts a response

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")  # the template ("/v1/models/{name:path}"): bounded label values
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, str(status)).inc()
