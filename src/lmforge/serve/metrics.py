"""Prometheus text exposition of the server's counters: requests by endpoint and status, latency, tokens, batches."""

from __future__ import annotations

import threading
from collections import Counter

# Paths outside this set are counted as "other", so that random URLs cannot grow the label set without bound.
ENDPOINTS = {
    "/",
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/classify",
}


class Metrics:
    def __init__(self, batch_stats):
        self.batch_stats = batch_stats
        self.requests: Counter = Counter()  # (endpoint, status) -> count
        self.latency_sum: Counter = Counter()  # endpoint -> seconds
        self.latency_count: Counter = Counter()
        self._lock = threading.Lock()

    def observe(self, path: str, status: int, seconds: float) -> None:
        endpoint = path if path in ENDPOINTS else "other"
        with self._lock:
            self.requests[endpoint, status] += 1
            self.latency_sum[endpoint] += seconds
            self.latency_count[endpoint] += 1

    def render(self) -> str:
        with self._lock:
            requests = sorted(self.requests.items())
            latency = sorted((e, self.latency_sum[e], self.latency_count[e]) for e in self.latency_count)
        s = self.batch_stats
        lines = [
            "# HELP lmforge_requests_total HTTP requests by endpoint and status.",
            "# TYPE lmforge_requests_total counter",
        ]
        lines += [
            f'lmforge_requests_total{{endpoint="{e}",status="{code}"}} {n}' for (e, code), n in requests
        ]
        lines += [
            "# HELP lmforge_request_latency_seconds Time from request to the end of the response.",
            "# TYPE lmforge_request_latency_seconds summary",
        ]
        for e, total, n in latency:
            lines += [
                f'lmforge_request_latency_seconds_sum{{endpoint="{e}"}} {total:.6f}',
                f'lmforge_request_latency_seconds_count{{endpoint="{e}"}} {n}',
            ]
        for name, kind, value, help in (
            ("generated_tokens_total", "counter", s.generated_tokens, "Tokens sampled by the model."),
            ("decode_batches_total", "counter", s.batches, "Decode calls (one forward pass per step each)."),
            ("batched_requests_total", "counter", s.batched_requests, "Requests that shared a decode call."),
            ("largest_batch", "gauge", s.largest_batch, "The most requests decoded together so far."),
            (
                "cancelled_requests_total",
                "counter",
                s.cancelled,
                "Generations stopped by a timeout or a client.",
            ),
            (
                "dropped_rows_total",
                "counter",
                s.dropped_rows,
                "Cancelled rows taken out of a batch that went on decoding without them.",
            ),
        ):
            lines += [
                f"# HELP lmforge_{name} {help}",
                f"# TYPE lmforge_{name} {kind}",
                f"lmforge_{name} {value}",
            ]
        return "\n".join(lines) + "\n"
