"""Test data: the state-dict layout and forward of the official EDAM and PSA ResNet-38 models.

Transcribed by hand from the official model files, independently of ``wsss_bench``:
- jiwoon-ahn/psa and allenwu97/EDAM ``network/resnet38d.py``: ``Net.__init__`` (the block
  constructor calls below, verbatim arguments), ``ResBlock.__init__`` and ``ResBlock_bot.__init__``
  (which parameters each block registers);
- allenwu97/EDAM ``network/resnet38_EDAM_cls.py``: ``mask_layer`` Conv2d(4096, 21, 3, no bias),
  ``d_d`` Conv2d(4096, 128, 1, no bias), 20 ``fc_list`` Conv2d(128, 1, 1, no bias), 20
  ``trans_list`` entries each a ModuleList of one ``TransformerBlock(128, 2, 512, 0.1)``, and
  ``embedding = BERTEmbedding(128, ...)`` (``network/embedding/*.py``: a ``pe`` buffer
  [1, 46*46, 128] and a ``SegmentEmbedding`` = nn.Embedding(5, 128));
- ``network/transformer.py``, ``network/attention/multi_head.py`` (three ``linear_layers`` and an
  ``output_linear``, Linear(128, 128)), ``network/utils/feed_forward.py`` (``w_1`` Linear(128, 512),
  ``w_2`` Linear(512, 128)), ``network/utils/sublayer.py`` + ``layer_norm.py`` (``norm.a_2``,
  ``norm.b_2`` of size 128).

EDAM trained with PyTorch 1.1, whose BatchNorm2d saves ``num_batches_tracked`` (shape []);
PSA's ImageNet initialisation (converted from MXNet by ``convert_mxnet_to_torch``) has none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Net.__init__ of resnet38d.py, in order: (name, class, positional args, keyword args)
RESNET38D_BLOCKS = [
    ("b2", "ResBlock", (64, 128, 128), {"stride": 2}),
    ("b2_1", "ResBlock", (128, 128, 128), {}),
    ("b2_2", "ResBlock", (128, 128, 128), {}),
    ("b3", "ResBlock", (128, 256, 256), {"stride": 2}),
    ("b3_1", "ResBlock", (256, 256, 256), {}),
    ("b3_2", "ResBlock", (256, 256, 256), {}),
    ("b4", "ResBlock", (256, 512, 512), {"stride": 2}),
    ("b4_1", "ResBlock", (512, 512, 512), {}),
    ("b4_2", "ResBlock", (512, 512, 512), {}),
    ("b4_3", "ResBlock", (512, 512, 512), {}),
    ("b4_4", "ResBlock", (512, 512, 512), {}),
    ("b4_5", "ResBlock", (512, 512, 512), {}),
    ("b5", "ResBlock", (512, 512, 1024), {"stride": 1, "first_dilation": 1, "dilation": 2}),
    ("b5_1", "ResBlock", (1024, 512, 1024), {"dilation": 2}),
    ("b5_2", "ResBlock", (1024, 512, 1024), {"dilation": 2}),
    ("b6", "ResBlock_bot", (1024, 2048), {"stride": 1, "dilation": 4, "dropout": 0.3}),
    ("b7", "ResBlock_bot", (2048, 4096), {"dilation": 4, "dropout": 0.5}),
]


def _bn(prefix: str, n: int, counters: bool) -> list[tuple[str, tuple[int, ...]]]:
    keys = [(f"{prefix}.weight", (n,)), (f"{prefix}.bias", (n,)),
            (f"{prefix}.running_mean", (n,)), (f"{prefix}.running_var", (n,))]
    if counters:
        keys.append((f"{prefix}.num_batches_tracked", ()))
    return keys


def resnet38d_keys(div: int = 1, counters: bool = True) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of resnet38d.Net's state dict, every channel count divided by ``div``."""
    c = lambda n: n // div  # noqa: E731
    keys = [("conv1a.weight", (c(64), 3, 3, 3))]
    for name, cls, args, kw in RESNET38D_BLOCKS:
        if cls == "ResBlock":
            cin, mid, cout = (c(a) for a in args)
            stride = kw.get("stride", 1)
            keys += _bn(f"{name}.bn_branch2a", cin, counters)
            keys.append((f"{name}.conv_branch2a.weight", (mid, cin, 3, 3)))
            keys += _bn(f"{name}.bn_branch2b1", mid, counters)
            keys.append((f"{name}.conv_branch2b1.weight", (cout, mid, 3, 3)))
            if not (cin == cout and stride == 1):
                keys.append((f"{name}.conv_branch1.weight", (cout, cin, 1, 1)))
        else:
            cin, cout = (c(a) for a in args)
            keys += _bn(f"{name}.bn_branch2a", cin, counters)
            keys.append((f"{name}.conv_branch2a.weight", (cout // 4, cin, 1, 1)))
            keys += _bn(f"{name}.bn_branch2b1", cout // 4, counters)
            keys.append((f"{name}.conv_branch2b1.weight", (cout // 2, cout // 4, 3, 3)))
            keys += _bn(f"{name}.bn_branch2b2", cout // 2, counters)
            keys.append((f"{name}.conv_branch2b2.weight", (cout, cout // 2, 1, 1)))
            keys.append((f"{name}.conv_branch1.weight", (cout, cin, 1, 1)))
    keys += _bn("bn7", c(4096), counters)
    return keys


def edam_training_only_keys(div: int = 1) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of the collaborative multi-attention module of resnet38_EDAM_cls.Net."""
    hidden = 128
    keys: list[tuple[str, tuple[int, ...]]] = [
        ("embedding.position.pe", (1, 46 * 46, hidden)),
        ("embedding.segment.weight", (5, hidden)),
    ]
    for i in range(20):
        p = f"trans_list.{i}.0"
        for j in range(3):
            keys += [(f"{p}.attention.linear_layers.{j}.weight", (hidden, hidden)),
                     (f"{p}.attention.linear_layers.{j}.bias", (hidden,))]
        keys += [(f"{p}.attention.output_linear.weight", (hidden, hidden)),
                 (f"{p}.attention.output_linear.bias", (hidden,)),
                 (f"{p}.feed_forward.w_1.weight", (4 * hidden, hidden)),
                 (f"{p}.feed_forward.w_1.bias", (4 * hidden,)),
                 (f"{p}.feed_forward.w_2.weight", (hidden, 4 * hidden)),
                 (f"{p}.feed_forward.w_2.bias", (hidden,)),
                 (f"{p}.input_sublayer.norm.a_2", (hidden,)),
                 (f"{p}.input_sublayer.norm.b_2", (hidden,)),
                 (f"{p}.output_sublayer.norm.a_2", (hidden,)),
                 (f"{p}.output_sublayer.norm.b_2", (hidden,))]
    keys.append(("d_d.weight", (hidden, 4096 // div, 1, 1)))
    keys += [(f"fc_list.{i}.weight", (1, hidden, 1, 1)) for i in range(20)]
    return keys


def edam_released_keys(div: int = 1, n_channels: int = 21) -> list[tuple[str, tuple[int, ...]]]:
    """Every key of EDAM's released state dict (PyTorch 1.1: with BN counters)."""
    return (resnet38d_keys(div, counters=True) + [("mask_layer.weight", (n_channels, 4096 // div, 3, 3))]
            + edam_training_only_keys(div))


def resnet38d_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, final_relu: bool) -> torch.Tensor:
    """``resnet38d.Net.forward`` (``forward_as_dict(x)['conv6']``) step by step with F.* calls on a
    state dict: ``ResBlock.forward`` / ``ResBlock_bot.forward`` (pre-activation ``bn_branch2a`` +
    ReLU feeds both branches; ``conv_branch1`` only where the shape changes, else the identity),
    dropout inactive (eval), ``bn7`` with (PSA) or without (EDAM) the ReLU after it."""
    def bn(prefix, t):
        return F.batch_norm(t, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"],
                            sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], training=False, eps=1e-5)

    x = F.conv2d(x, sd["conv1a.weight"], padding=1)
    for name, cls, _args, kw in RESNET38D_BLOCKS:
        stride = kw.get("stride", 1)
        dilation = kw.get("dilation", 1)
        a = F.relu(bn(f"{name}.bn_branch2a", x))
        if cls == "ResBlock":
            first = kw.get("first_dilation", dilation)
            branch1 = F.conv2d(a, sd[f"{name}.conv_branch1.weight"], stride=stride) \
                if f"{name}.conv_branch1.weight" in sd else x
            b = F.conv2d(a, sd[f"{name}.conv_branch2a.weight"], stride=stride, padding=first, dilation=first)
            b = F.relu(bn(f"{name}.bn_branch2b1", b))
            b = F.conv2d(b, sd[f"{name}.conv_branch2b1.weight"], padding=dilation, dilation=dilation)
        else:
            branch1 = F.conv2d(a, sd[f"{name}.conv_branch1.weight"], stride=stride)
            b = F.conv2d(a, sd[f"{name}.conv_branch2a.weight"], stride=stride)
            b = F.relu(bn(f"{name}.bn_branch2b1", b))
            b = F.conv2d(b, sd[f"{name}.conv_branch2b1.weight"], padding=dilation, dilation=dilation)
            b = F.relu(bn(f"{name}.bn_branch2b2", b))
            b = F.conv2d(b, sd[f"{name}.conv_branch2b2.weight"])
        x = branch1 + b
    x = bn("bn7", x)
    return F.relu(x) if final_relu else x


def edam_forward_cam(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``resnet38_EDAM_cls.Net.forward_cam``: ResNet-38 without the final ReLU, ``mask_layer`` (3x3,
    padding 1, no bias), ``F.normalize`` over channels (p 2, eps 1e-12), absolute value."""
    mask = F.conv2d(resnet38d_forward(sd, x, final_relu=False), sd["mask_layer.weight"], padding=1)
    return torch.abs(F.normalize(mask))
