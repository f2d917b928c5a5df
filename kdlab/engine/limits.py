"""Ranges that every setting of one kind shares, checked when a recipe is validated.

A seed is one that numpy, scikit-learn (data splits) and torch all accept; a batch size one
that indexing can hold. Values outside them used to pass ``kdlab validate`` and end in a
traceback from the library that first saw them.
"""

from __future__ import annotations

from attrs import validators as v

SEED_MAX = 2**32 - 1  # numpy's and scikit-learn's random_state; derived torch seeds stay in range
BATCH_MAX = 2**31 - 1

seed = v.and_(v.ge(0), v.le(SEED_MAX))
batch_size = v.and_(v.ge(1), v.le(BATCH_MAX))


def torch_seed(value: int) -> int:
    """``value`` where torch accepts it as a seed ([-2^63, 2^64)), otherwise reduced modulo 2^64:
    every recipe seed up to ``SEED_MAX`` gives valid derived seeds, and the seeds that were valid
    before are unchanged (their results too)."""
    return value if -(2**63) <= value < 2**64 else value % 2**64
