"""Statistics over seeds and the verdict rules of the paper benchmark.

A claim holds only when the difference of means exceeds the spread (std + std over seeds, ddof 1)
and the networks compared are clearly above the random-init network (the floor); with fewer than
3 seeds on a side the verdict says ``(n < 3)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MIN_SEEDS = 3


@dataclass
class Stat:
    """Values of one quantity over seeds: ``{seed: value}``."""

    by_seed: dict[int, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.by_seed)

    @property
    def mean(self) -> float:
        v = list(self.by_seed.values())
        return sum(v) / len(v) if v else math.nan

    @property
    def std(self) -> float:
        v = list(self.by_seed.values())
        if len(v) < 2:
            return 0.0
        m = sum(v) / len(v)
        return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))

    def fmt(self) -> str:
        if self.n == 0:
            return "–"
        if self.n == 1:
            return f"{self.mean:.2f} (1 seed)"
        return f"{self.mean:.2f} ± {self.std:.2f} (n={self.n})"


def stat(records: Iterable[dict[str, Any]], **where: Any) -> Stat:
    """The records matching ``where`` (linear top-1 unless said otherwise), by seed."""
    where = {"protocol": "linear", "metric": "top1", **where}
    out = Stat()
    for r in records:
        if all(r.get(k) == v for k, v in where.items()):
            out.by_seed[int(r["seed"])] = float(r["value"])
    return out


def paired(a: Stat, b: Stat) -> Stat:
    """``a - b`` seed by seed (the seeds both have)."""
    return Stat({s: a.by_seed[s] - b.by_seed[s] for s in a.by_seed if s in b.by_seed})


def one_seed(diff: float) -> str:
    """The verdict while both sides have one seed: no spread is measured, so none is given."""
    return f"not yet judged (1 seed each; difference {diff:+.2f})"


def compare(a: Stat, b: Stat) -> tuple[str, float, float]:
    """Verdict on "a > b": (verdict, difference of means, spread = std_a + std_b).

    ``holds`` only when the difference exceeds the spread; fewer than 3 seeds on either side
    adds "(n < 3)" to the verdict, since the spread is then not measured.
    """
    if a.n == 0 or b.n == 0:
        return "not yet run", math.nan, math.nan
    diff, spread = a.mean - b.mean, a.std + b.std
    if a.n < 2 and b.n < 2:
        return one_seed(diff), diff, spread
    if diff > spread:
        verdict = "holds"
    elif diff < -spread:
        verdict = "does not hold (reversed beyond the spread)"
    else:
        verdict = "does not hold (difference within the spread)"
    if min(a.n, b.n) < MIN_SEEDS:
        verdict += f" (n < {MIN_SEEDS})"
    return verdict, diff, spread


def at_least(a: Stat, b: Stat) -> tuple[str, float, float]:
    """Verdict on "a >= b" (not worse): holds when a's mean is not below b's."""
    if a.n == 0 or b.n == 0:
        return "not yet run", math.nan, math.nan
    diff, spread = a.mean - b.mean, a.std + b.std
    if a.n < 2 and b.n < 2:
        return one_seed(diff), diff, spread
    if diff > spread:
        verdict = "holds (better beyond the spread)"
    elif diff >= 0:
        verdict = "holds (not worse; the gain is within the spread)"
    elif diff >= -spread:
        verdict = "does not hold (lower, within the spread)"
    else:
        verdict = "does not hold (lower beyond the spread)"
    if min(a.n, b.n) < MIN_SEEDS:
        verdict += f" (n < {MIN_SEEDS})"
    return verdict, diff, spread


def above_random(x: Stat, rnd: Stat) -> bool:
    """``x`` is clearly above the random-init network: by more than both spreads."""
    if x.n == 0 or rnd.n == 0:
        return True  # nothing to say yet
    return x.mean - rnd.mean > x.std + rnd.std


def guard(verdict: str, nets: dict[str, Stat], rnd: Stat) -> str:
    """The random-init rule: a verdict on networks not clearly above random init is withheld
    ("not testable"), the difference alone still shown."""
    low = [name for name, s in nets.items() if not above_random(s, rnd)]
    if low and verdict.startswith("holds"):
        return f"not testable: {', '.join(low)} not above random init (the difference: {verdict})"
    if low:
        return verdict + "; " + ", ".join(low) + " not above random init"
    return verdict


def judged(a: Stat, b: Stat, names: tuple[str, str], rnd: Stat) -> str:
    """``compare(a, b)``'s verdict under the random-init rule; ``names``: (a's, b's)."""
    verdict, _, _ = compare(a, b)
    if verdict == "not yet run":
        return verdict
    return guard(verdict, {names[1]: b, names[0]: a}, rnd)
