"""nanodist's own data parallelism: gradient buckets all-reduced from backward hooks, as torch's DDP does.

Every rank holds the whole model (or its plain tensor-parallel shard of it) and computes the
gradients of its own rows of the batch; averaging them over the group gives every rank the
gradients of the whole batch. Doing that as one all-reduce after backward leaves the network idle
while backward computes and the cores idle while the all-reduce runs. So the parameters are cut
into buckets of about `bucket_mb` MiB, in reverse registration order (the order backward produces
their gradients in), and each bucket is all-reduced asynchronously the moment its last gradient is
accumulated, while backward goes on with the earlier layers. At the end of backward (a callback
the autograd engine runs once the graph is done) every bucket is waited for and its averaged values
are copied back into `param.grad`, so gradients are complete when `loss.backward()` returns.

Gradient accumulation turns the hooks off (`set_requires_gradient_sync(False)`, torch's `no_sync`):
gradients sum locally and the last micro-step all-reduces the sums. The collectives are plain
`torch.distributed` calls; the model keeps its own parameter names (no wrapper module).
"""

from __future__ import annotations

import collections
import time

import torch
import torch.distributed as dist
import torch.nn as nn

MiB = 1 << 20
TIMELINE_LENGTH = 64  # backwards kept in `GradientBuckets.timeline`; older ones are dropped


class Bucket:
    """Parameters whose gradients travel in one all-reduce, through one flat buffer holding all of them."""

    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        self.flat = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        self.views = list(torch.split(self.flat, [p.numel() for p in params]))
        self.ready = 0  # gradients accumulated so far in this backward
        self.work = None

    def pack(self, world_size: int) -> None:
        """The gradients into the flat buffer, pre-divided so that the summed all-reduce is their mean
        (a parameter without a gradient in this backward contributes zeros)."""
        for param, view in zip(self.params, self.views):
            if param.grad is None:
                view.zero_()
            else:
                view.copy_(param.grad.reshape(-1))
        self.flat.div_(world_size)

    def unpack(self) -> None:
        """The averaged values back into each parameter's gradient."""
        for param, view in zip(self.params, self.views):
            if param.grad is None:
                param.grad = view.view_as(param).clone()
            else:
                param.grad.copy_(view.view_as(param))
        self.ready, self.work = 0, None


def bucket_params(params: list[nn.Parameter], bucket_bytes: float) -> list[Bucket]:
    """Consecutive parameters, last registered first, closed into a bucket once it holds `bucket_bytes`
    (and at a change of dtype or device, which one flat buffer cannot mix)."""
    buckets, current, size = [], [], 0
    for param in reversed(params):
        if current and (param.dtype, param.device) != (current[0].dtype, current[0].device):
            buckets.append(Bucket(current))
            current, size = [], 0
        current.append(param)
        size += param.numel() * param.element_size()
        if size >= bucket_bytes:
            buckets.append(Bucket(current))
            current, size = [], 0
    if current:
        buckets.append(Bucket(current))
    return buckets


class GradientBuckets:
    """The buckets of one model and the hooks that all-reduce them over `group` during backward.

    With `overlap=False` all parameters form one bucket, all-reduced in one call once backward has
    finished: the baseline that the per-bucket hooks are measured against (benchmarks/ddp_overlap.py).

    `timeline` holds, for each of the last synchronised backwards, the perf_counter times of its
    first and last gradient hook and, per bucket, when its all-reduce was launched and completed
    (stamped by a callback on the collective's future, on gloo's thread).
    """

    def __init__(self, params: list[nn.Parameter], group: dist.ProcessGroup, bucket_mb: float, overlap: bool = True):
        self.group, self.world_size, self.overlap = group, dist.get_world_size(group), overlap
        self.buckets = bucket_params(params, bucket_mb * MiB if overlap else float("inf"))
        self.sync = True
        self.timeline: collections.deque[dict] = collections.deque(maxlen=TIMELINE_LENGTH)
        self.in_backward = False
        for bucket in self.buckets:
            for param in bucket.params:
                param.register_post_accumulate_grad_hook(self.hook_for(bucket))

    def set_requires_gradient_sync(self, enabled: bool) -> None:
        """False on accumulation micro-steps: the hooks do nothing and gradients sum locally."""
        self.sync = enabled

    def hook_for(self, bucket: Bucket):
        def on_gradient(param: nn.Parameter) -> None:
            if not self.sync:
                return
            now = time.perf_counter()
            if not self.in_backward:  # the first gradient of this backward: wait for all at its end
                self.in_backward = True
                self.timeline.append({"first_hook": now, "last_hook": now, "buckets": {}})
                torch.autograd.Variable._execution_engine.queue_callback(self.finish)
            self.timeline[-1]["last_hook"] = now
            bucket.ready += 1
            if self.overlap and bucket.ready == len(bucket.params):
                self.launch(bucket)
        return on_gradient

    def launch(self, bucket: Bucket) -> None:
        """Start the bucket's all-reduce and return at once; its completion is stamped when it comes."""
        bucket.pack(self.world_size)
        stamps = {"launched": time.perf_counter()}
        self.timeline[-1]["buckets"][self.buckets.index(bucket)] = stamps
        bucket.work = dist.all_reduce(bucket.flat, group=self.group, async_op=True)
        bucket.work.get_future().then(lambda _: stamps.__setitem__("completed", time.perf_counter()))

    def finish(self) -> None:
        """End of backward: launch what is left (all of it without overlap, or a bucket one of whose
        parameters got no gradient), wait for every bucket and write the means into the gradients."""
        self.in_backward = False
        for bucket in self.buckets:
            if bucket.work is None:
                self.launch(bucket)
        for bucket in self.buckets:
            bucket.work.wait()
            bucket.unpack()


@torch.no_grad()
def broadcast_from_first_rank(tensors: list[torch.Tensor], group: dist.ProcessGroup) -> None:
    """Every rank starts from the group's first rank's values, whatever it initialised itself."""
    source = dist.get_process_group_ranks(group)[0]
    for tensor in tensors:
        dist.broadcast(tensor, src=source, group=group)


def apply_reference_ddp(model: nn.Module, group: dist.ProcessGroup, bucket_mb: float,
                        overlap: bool = True) -> GradientBuckets:
    """Replicate `model` (its real weights, each parameter a plain tensor) over `group`.

    Tied weights are one parameter (`model.parameters()` lists each once), so one bucket slot.
    `model.set_requires_gradient_sync` is bound to the buckets', where
    `nanodist.parallel.parallelize.set_gradient_sync` looks for it.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    broadcast_from_first_rank([*model.parameters(), *model.buffers()], group)
    buckets = GradientBuckets(params, group, bucket_mb, overlap)
    model.set_requires_gradient_sync = buckets.set_requires_gradient_sync
    return buckets
