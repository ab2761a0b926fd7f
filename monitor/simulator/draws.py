"""Seeded draws the fleet is made of: fast enough for 100,000 connections, deterministic for a seed."""

from __future__ import annotations

import bisect
import math
import random
from typing import TypeVar

_T = TypeVar("_T")

_UUID_MASK = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID_V4 = (0x4000 << 64) | (0x8000 << 48)


def new_uuid(rng: random.Random) -> str:
    """A version-4 UUID drawn from `rng` (deterministic per seed; formatted by hand for bulk speed)."""
    h = f"{(rng.getrandbits(128) & _UUID_MASK) | _UUID_V4:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def pick(rng: random.Random, values: tuple[_T, ...], cumulative: tuple[float, ...]) -> _T:
    """rng.choices(values, cum_weights=...)[0] without building a list."""
    return values[bisect.bisect(cumulative, rng.random() * cumulative[-1])]


def log_uniform(rng: random.Random, bounds: tuple[float, float]) -> float:
    """A duration between `bounds`, with as many short ones as long ones per order of magnitude."""
    low, high = bounds
    return math.exp(rng.uniform(math.log(low), math.log(high)))
