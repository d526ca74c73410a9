"""The paper's findings at CPU scale on CIFAR-10: ``python -m benchmarks.paper``.

ClusterFit (Yan et al., CVPR 2020), claim by claim, on real data:

1. **Control experiment** (§3.2, Fig. 3): D_pre = D_cf = CIFAR-10 train; N_pre supervised on labels
   with uniform noise p in {0, 25, 50, 75}%; ClusterFit with K in {10, 50, 200, 1000}; N_cf with the
   same architecture and epochs; distillation; N_pre 2x. Probes of res4 and res5 on CIFAR-10
   (aligned target) and Fashion-MNIST (different label space). Two regimes: the present one
   (``full``: 15,000 images, 10 epochs, N_pre under-trained) and the over-fitting one
   (``--overfit``: a small D_pre, many epochs, no augmentation, N_pre memorising its labels).
2. **Self-supervised** (§4.2, Fig. 4, Table 6, App. E): RotNet and Jigsaw N_pre on CIFAR-10 images
   without labels, ClusterFit with K in {100, 1000}, layer-wise probes, multi-task ClusterFit.
3. **A pre-trained teacher** (``--teacher``, §5.1 in spirit): EfficientNet-Lite0 with its ImageNet
   weights as N_pre, a small ResNet N_cf on CIFAR-10 images without labels, against RotNet, Jigsaw
   and supervised training of the same network.
4. A randomly initialised network of the same architecture in every table (the floor).

The package: :mod:`~benchmarks.paper.scale` (the suites' sizes), :mod:`~benchmarks.paper.plan`
(steps, estimates, configs), :mod:`~benchmarks.paper.runner` (runs what the run graph says is not
complete; collects records), :mod:`~benchmarks.paper.claims` (one function per claim, the list
``CLAIMS``), :mod:`~benchmarks.paper.render` (``benchmarks/RESULTS.md`` and plots).

Hyper-parameters are chosen on validation splits carved from the *train* splits (5,000 CIFAR-10
and 5,000 Fashion-MNIST train images, ``benchmarks/paper_data.py``): K of each experiment is the K
whose N_cf has the best mean validation top-1 (res5, both validation targets) in the selection
runs (seed 0), which come first in the plan (``--pilot`` runs only those). Test splits are read
only by the final probes and never by a choice.

Run folders live under ``~/.cache/clusterfit/paper-runs/<suite>`` (``$CLUSTERFIT_CACHE``,
``--runs``), outside git; rerunning a command skips every complete stage and resumes an
interrupted one.

Usage (from the repository root)::

    python -m benchmarks.paper --quick          # the whole path on a tiny grid (<= 15 min)
    python -m benchmarks.paper                  # the present regime (resumable)
    python -m benchmarks.paper --overfit        # the over-fitting regime (resumable)
    python -m benchmarks.paper --teacher        # the pre-trained teacher (resumable)
    python -m benchmarks.paper --list           # the plan, with estimated time per step
    python -m benchmarks.paper --only control   # control | selfsup | select | headline | ...
    python -m benchmarks.paper --pilot          # the signal and validation (selection) runs
    python -m benchmarks.paper --throughput     # measure training / inference images per second
    python -m benchmarks.paper --report-only    # rebuild JSON, RESULTS.md and plots
"""

from __future__ import annotations

from benchmarks.paper.claims import (
    CLAIMS,
    Evidence,
    evaluate_claims,
    gain_vs_memorisation,
    long_pre_check,
    select_k,
    selections,
    signal_check,
)
from benchmarks.paper.plan import (
    SELECT,
    Paths,
    Step,
    budget_line,
    build_plan,
    control_run,
    estimate,
    filter_plan,
    make_config,
    selfsup_run,
    teacher_run,
)
from benchmarks.paper.runner import choose_threads, collect, step_state, write_results
from benchmarks.paper.scale import (
    FULL,
    GPU,
    LONG_PRE,
    OVERFIT,
    QUICK,
    SCALES,
    TEACHER,
    Scale,
)
from benchmarks.paper.stats import Stat, at_least, compare, paired, stat

__all__ = [
    "CLAIMS",
    "FULL",
    "GPU",
    "LONG_PRE",
    "OVERFIT",
    "QUICK",
    "SCALES",
    "SELECT",
    "TEACHER",
    "Evidence",
    "Paths",
    "Scale",
    "Stat",
    "Step",
    "at_least",
    "budget_line",
    "build_plan",
    "choose_threads",
    "collect",
    "compare",
    "control_run",
    "estimate",
    "evaluate_claims",
    "filter_plan",
    "gain_vs_memorisation",
    "long_pre_check",
    "make_config",
    "paired",
    "select_k",
    "selections",
    "selfsup_run",
    "signal_check",
    "stat",
    "step_state",
    "teacher_run",
    "write_results",
]
