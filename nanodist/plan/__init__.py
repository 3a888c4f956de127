"""Layer 6, the planner: every layout of a model on a cluster, checked, estimated and ranked before
any job is queued (`python -m nanodist.plan`), and the pruning of sweeps (`plan.prune=true`).

It sits above tools, whose dry run supplies the exact per-rank figures, and below launch, which
prunes sweeps with it.
"""

from nanodist.plan.layouts import Layout, enumerate_layouts
from nanodist.plan.rank import plan_layouts

__all__ = ["Layout", "enumerate_layouts", "plan_layouts"]
