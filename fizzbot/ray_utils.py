"""Starting or joining Ray: the one place that calls `ray.init`."""

from __future__ import annotations

import logging
import os


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the running Ray (a `ray start` head on this machine, RAY_ADDRESS, a job) or start one.

    `ray.init()` with no address does exactly that search; a fresh local instance gets no
    dashboard, which saves seconds and memory on a laptop (a head started with `ray start --head`
    keeps its own dashboard and job server).
    """
    import ray

    if ray.is_initialized():
        return
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    joining = bool(os.environ.get("RAY_ADDRESS")) or os.path.exists("/tmp/ray/ray_current_cluster")
    if not joining:
        kwargs["include_dashboard"] = False
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
    try:
        ray.init(**kwargs)
    except ConnectionError:
        # A stale /tmp/ray/ray_current_cluster from a stopped head: start a local instance instead.
        kwargs.pop("include_dashboard", None)
        ray.init(address="local", include_dashboard=False, num_cpus=num_cpus, logging_level=logging.WARNING)


def quiet_ray_data() -> None:
    """Ray Data settings for small clusters.

    Operator resource reservation holds CPUs back for downstream operators; on a 2-core laptop that
    starves the one map that matters (measured: 2x slower than with it off; docs/BENCHMARKS.md).
    """
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.op_resource_reservation_enabled = False
    ctx.execution_options.preserve_order = True


def storage_runtime_env() -> dict:
    """A runtime env that hands this process's storage variables (AWS_*, FIZZBOT_CACHE, ...) to Ray workers.

    Ray processes started before the variables were set (a long-lived cluster, a test session) would
    not see them; on a cluster whose nodes hold their own credentials there is nothing to forward.
    """
    from fizzbot.artifacts.storage import storage_env

    env = storage_env()
    return {"env_vars": env} if env else {}
