"""Failures on purpose: how the tests show, over real HTTP, that one bad request takes no other down.

Off unless the engine's process has `FIZZBOT_INJECT_FAULTS=stage=MARKER[,stage=MARKER...]`; then a
request whose prompt contains MARKER fails at that stage. Stages: `prefill` (the forward that
prefills its prompt raises, for every row prefilled with it), `step` (its decode step raises) and
`slow` (every decode step with it takes 50 ms longer: a request that outlives its timeout).
"""

from __future__ import annotations

import os
import time

ENV = "FIZZBOT_INJECT_FAULTS"
STAGES = ("prefill", "step", "slow")


class InjectedFault(RuntimeError):
    pass


class Faults:
    def __init__(self, spec: str = ""):
        self.markers: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            stage, _, marker = part.partition("=")
            if stage not in STAGES or not marker:
                raise ValueError(f"{ENV}: {part!r} is not stage=MARKER with a stage among {', '.join(STAGES)}")
            self.markers[stage] = marker

    @classmethod
    def from_env(cls) -> "Faults":
        return cls(os.environ.get(ENV, ""))

    def __bool__(self) -> bool:
        return bool(self.markers)

    def check(self, stage: str, prompts) -> None:
        marker = self.markers.get(stage)
        if marker and any(marker in p for p in prompts):
            if stage == "slow":
                time.sleep(0.05)
                return
            raise InjectedFault(f"injected {stage} failure")
