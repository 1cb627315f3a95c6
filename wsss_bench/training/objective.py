"""The training objective and world-size-independent batch-norm statistics (pure tensor code).

- :func:`msc_logits` / :class:`TrainObjective`: DeepLab-v2's multi-scale (MSC) training loss, as
  kazuto1011/deeplab-pytorch's ``libs/models/msc.py`` + ``main.py`` compute it: logits of the crop at
  scale 1.0 and at each of ``msc_scales`` (the input resized bilinearly with that ``scale_factor``),
  plus their element-wise maximum after upsampling to the 1.0 logits' size; the loss is the **sum** of
  the cross-entropies of these outputs (ignore 255), each against the labels resized to its size by
  nearest neighbour (pixel centres, like PIL's ``NEAREST``). ``loss = "ce"``: one cross-entropy on the
  logits, upsampled bilinearly to the crop when the network outputs them smaller.
  Each cross-entropy is the mean over the micro-batch's non-ignored pixels (``nn.CrossEntropyLoss``'s
  ``mean``), and 0 when every pixel is ignored.
- :class:`BNStatSync`: with trained batch norms, batch statistics are those of a micro-batch (the
  same micro-batches whatever the number of ranks), and the running statistics are updated as if all
  the step's micro-batches had gone through one process in global order, exactly (to float
  rounding): each rank adds its micro-batches' terms of the exponential moving average and one
  all-reduce sums them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from wsss_bench.errors import WsssBenchError

IGNORE = 255


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """int64 [B, H, W] -> [B, h, w] by pixel-centre nearest neighbour: source floor((i + 0.5) in / out),
    as PIL's ``NEAREST`` (which rounds down where that is an exact integer, a float artefact)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()


def masked_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over non-ignored pixels (0 when there are none)."""
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum")
    count = (labels != IGNORE).sum().clamp(min=1)
    return total / count


def msc_logits(net: nn.Module, x: torch.Tensor, scales: tuple[float, ...]) -> list[torch.Tensor]:
    """``[logits(1.0), logits(s) for s in scales, max]`` as the reference's ``MSC`` returns in training."""
    logits = net(x)
    h, w = logits.shape[-2:]
    pyramid = [net(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)) for s in scales]
    everything = [logits] + [F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False) for p in pyramid]
    return [logits, *pyramid, torch.stack(everything).max(dim=0)[0]]


class TrainObjective(nn.Module):
    """``forward(images, labels)`` -> the scalar loss of one micro-batch (wrapped in DDP as a whole,
    so that the several passes of the multi-scale loss are one forward for the reducer)."""

    def __init__(self, net: nn.Module, loss: str = "ce", msc_scales: tuple[float, ...] = ()):
        super().__init__()
        if loss not in ("ce", "msc"):
            raise WsssBenchError(f"loss must be 'ce' or 'msc', got {loss!r}")
        self.net, self.loss, self.msc_scales = net, loss, tuple(msc_scales)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss == "msc":
            outs = msc_logits(self.net, images, self.msc_scales)
            return sum(masked_ce(o, resize_labels(labels, tuple(o.shape[-2:]))) for o in outs)
        out = self.net(images)
        if tuple(out.shape[-2:]) != tuple(labels.shape[-2:]):
            out = F.interpolate(out.float(), size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=False)
        return masked_ce(out, labels)


class BNStatSync:
    """World-size-independent running statistics for trained batch norms (see the module docstring).

    Usage per optimiser step: :meth:`begin_step`; for each local micro-batch :meth:`begin_micro` with
    its global index (``rank * A + a`` for the ``a``-th of ``A`` local micro-batches); after the
    backward passes, :meth:`end_step` with the number of micro-batches of the whole step. While
    active, the modules' own momentum is 0 (they leave their running statistics alone); :meth:`close`
    restores it and removes the hooks.
    """

    def __init__(self, net: nn.Module):
        self.modules = [m for m in net.modules()
                        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        self.momenta: list[float] = []
        for m in self.modules:
            if m.momentum is None:
                raise WsssBenchError("batch norms with a cumulative average (momentum=None) are not supported")
            self.momenta.append(float(m.momentum))
            m.momentum = 0.0
        self.stats: list[list[tuple[int, torch.Tensor, torch.Tensor]]] = [[] for _ in self.modules]
        self.current = 0
        self.handles = [m.register_forward_pre_hook(self._hook(i)) for i, m in enumerate(self.modules)]

    def _hook(self, i: int):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if not module.training:
                return
            x = inputs[0].detach().float()
            dims = [0] + list(range(2, x.ndim))
            with torch.no_grad():
                self.stats[i].append((self.current, x.mean(dim=dims), x.var(dim=dims, unbiased=True)))
        return hook

    def begin_step(self) -> None:
        for s in self.stats:
            s.clear()

    def begin_micro(self, global_index: int) -> None:
        self.current = int(global_index)

    @torch.no_grad()
    def end_step(self, total_micro: int, distributed: bool) -> None:
        parts: list[torch.Tensor] = []
        counts: list[int] = []
        for i, m in enumerate(self.modules):
            entries = self.stats[i]
            if not entries:
                counts.append(0)
                parts += [torch.zeros_like(m.running_mean), torch.zeros_like(m.running_var)]
                continue
            local_micro = len({e[0] for e in entries})
            if len(entries) % local_micro:
                raise RuntimeError("a batch norm ran a different number of times per micro-batch")
            calls = len(entries) // local_micro
            k_total = total_micro * calls
            mom = self.momenta[i]
            seen: dict[int, int] = {}
            acc_mean = torch.zeros_like(m.running_mean, dtype=torch.float32)
            acc_var = torch.zeros_like(m.running_var, dtype=torch.float32)
            for mb, mean, var in entries:
                c = seen.get(mb, 0)
                seen[mb] = c + 1
                p = mb * calls + c
                weight = mom * (1.0 - mom) ** (k_total - 1 - p)
                acc_mean += weight * mean
                acc_var += weight * var
            counts.append(k_total)
            parts += [acc_mean, acc_var]
        if not parts:
            return
        flat = torch.cat([p.reshape(-1) for p in parts])
        if distributed:
            backend = dist.get_backend()
            t = flat if (backend == "nccl") == flat.is_cuda else flat.cpu()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            flat = t.to(flat.device)
        offset = 0
        for i, m in enumerate(self.modules):
            n = m.running_mean.numel()
            mean, var = flat[offset:offset + n], flat[offset + n:offset + 2 * n]
            offset += 2 * n
            k_total = counts[i]
            if k_total == 0:
                continue
            decay = (1.0 - self.momenta[i]) ** k_total
            m.running_mean.copy_((decay * m.running_mean.float() + mean).to(m.running_mean.dtype))
            m.running_var.copy_((decay * m.running_var.float() + var).to(m.running_var.dtype))
            local = len(self.stats[i])
            m.num_batches_tracked.add_(k_total - local)  # the module counted its own forward passes

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        for m, mom in zip(self.modules, self.momenta, strict=True):
            m.momentum = mom
        self.handles = []
