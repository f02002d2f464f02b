"""Prometheus metrics of a replica, through Ray Serve's metrics API (`ray.serve.metrics`).

Ray exports them from every node's metrics agent with the `ray_` prefix, beside Serve's own
(`ray_serve_*`: requests, latencies, errors per route); README.md says how to scrape them.
The engine reports from its thread (`on_step`, `on_finish`); the routes report each request's outcome.
"""

from __future__ import annotations

TOKEN_BOUNDARIES = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
FIRST_TOKEN_BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


class ServerMetrics:
    """The replica's metrics; also the engine's observer."""

    def __init__(self, engine):
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.engine = engine
        self.queue = Gauge("fizzbot_queue_depth", description="Requests waiting to join the batch.")
        self.running = Gauge("fizzbot_running_rows", description="Requests in the running batch.")
        self.batch = Histogram("fizzbot_batch_size", description="Rows decoded per engine step.", boundaries=BATCH_BOUNDARIES)
        self.tokens = Counter("fizzbot_tokens_generated", description="Completion tokens generated.", tag_keys=("adapter",))
        self.first_token = Histogram("fizzbot_time_to_first_token_seconds", description="From admission to the first token.",
                                     boundaries=FIRST_TOKEN_BOUNDARIES, tag_keys=("adapter",))
        self.per_token = Histogram("fizzbot_time_per_output_token_seconds", description="Decoding time per token after the first.",
                                   boundaries=TOKEN_BOUNDARIES, tag_keys=("adapter",))
        self.requests = Counter("fizzbot_requests", description="Requests by outcome (HTTP status) and adapter.", tag_keys=("status", "adapter"))
        self._steps = 0

    # --- from the engine's thread -------------------------------------------------------------------
    def on_step(self, rows: int) -> None:
        self.batch.observe(rows)
        self._steps += 1
        if self._steps % 16 == 1:  # gauges are sampled, not updated every step
            stats = self.engine.stats()
            self.queue.set(stats["waiting"])
            self.running.set(stats["running"])

    def on_finish(self, request) -> None:
        result = request.result
        if result is None:
            return
        tags = {"adapter": request.adapter or "default"}
        self.tokens.inc(result.completion_tokens, tags=tags)
        if result.first_token_s is not None:
            self.first_token.observe(result.first_token_s, tags=tags)
            if result.completion_tokens > 1:
                self.per_token.observe((result.seconds - result.first_token_s) / (result.completion_tokens - 1), tags=tags)

    # --- from the routes ----------------------------------------------------------------------------------
    def outcome(self, status: int, adapter: str | None) -> None:
        self.requests.inc(tags={"status": str(status), "adapter": adapter or "default"})
