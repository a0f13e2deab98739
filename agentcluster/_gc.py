"""Garbage-collector settings for long-running processes (session hosts, gateway replicas)."""

from __future__ import annotations

import gc

__all__ = ["settle_long_lived_objects"]

GEN0_THRESHOLD = 10_000
"""Allocations between young collections (Python's default is 700): a turn allocates tens of
thousands of short-lived objects (pydantic models, LiteLLM chunks), and collecting every 700 of
them costs CPU on every turn for nothing."""


def settle_long_lived_objects() -> None:
    """Call once imports and startup are done: collect, then freeze what is left (the ~500k
    objects of LiteLLM, Ray and our modules), so no later full collection walks them (one took
    200-350 ms and stalled every session of a host), and collect the young generation less often.
    """
    gc.collect()
    gc.freeze()
    _gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
