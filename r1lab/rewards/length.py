"""Length rewards: DAPO's soft overlong punishment.

DAPO (Yu et al. 2025, eq. 13) punishes a response smoothly as it nears the generation limit instead of
only cutting it off: no penalty up to ``max_length - cache_length`` tokens, then a linear ramp down to
-1 at ``max_length``, and -1 beyond. It reads ``completion_length`` (tokens), which the trainer always
passes. R1 itself has no length reward; this is for runs whose responses outgrow their budget.

Simplified: DAPO also filters truncated samples out of the loss ("overlong filtering"); that is the
trainer's business, not a reward's.
"""

from __future__ import annotations

from r1lab.rewards.registry import register


@register("overlong", needs=("max_length",), options=("cache_length",),
          help="0, then a ramp to -1 over the last cache_length tokens of the budget (DAPO)")
def overlong(
    completion: str,
    *,
    completion_length: int,
    max_length: int | None = None,
    cache_length: int | None = None,
    **_,
) -> float | None:
    """0 up to ``max_length - cache_length`` tokens, a ramp down to -1 at ``max_length``, -1 beyond.

    ``cache_length`` defaults to ``max_length // 4``. Without ``max_length`` (a field of the example,
    or bound with ``functools.partial(overlong, max_length=...)``) there is nothing to judge: None.

    >>> overlong("...", completion_length=700, max_length=1000)     # ramp starts at 750
    0.0
    >>> overlong("...", completion_length=900, max_length=1000)
    -0.6
    >>> overlong("...", completion_length=1001, max_length=1000)
    -1.0
    >>> overlong("...", completion_length=900) is None
    True
    """
    if max_length is None:
        return None
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    cache = max_length // 4 if cache_length is None else cache_length
    if not 0 <= cache <= max_length:
        raise ValueError(f"cache_length must be in [0, max_length={max_length}], got {cache_length}")
    if completion_length > max_length:
        return -1.0
    if completion_length > max_length - cache:
        return (max_length - cache - completion_length) / cache
    return 0.0
