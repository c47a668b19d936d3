"""The networks: a small ResNet for the digits, and ResNet-18 / ResNet-50 written out here.

torchvision cannot be imported beside this torch build, so the standard architectures are
defined in this module (He et al. 2016; the stride of a bottleneck sits on its 3x3 convolution,
as in torchvision's "ResNet v1.5"). Every convolution is followed by a BatchNorm, held together
in a :class:`ConvBN`, so :func:`fold_batchnorm` can turn each pair into one convolution with a
bias before quantization: the network that is quantized, trained and exported is then exactly
the one the container describes, with no normalisation parameters left to store.

Module names are kept short because every tensor name is stored in the container.
"""

import copy

import torch
from torch import nn

__all__ = ["ConvBN", "ConvBN1d", "Mnist1dNet", "BasicBlock", "Bottleneck", "ResNet", "MODELS",
           "build_model",
           "fold_batchnorm", "weight_count", "input_shape"]


class ConvBN(nn.Module):
    """A bias-free convolution and the BatchNorm after it (folded into one by fold_batchnorm)."""

    def __init__(self, cin, cout, kernel, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, cin, width, stride=1):
        super().__init__()
        cout = width * self.expansion
        self.a = ConvBN(cin, width, 3, stride)
        self.b = ConvBN(width, cout, 3)
        self.sc = ConvBN(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.b(self.relu(self.a(x))) + self.sc(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by four, and the shortcut."""

    expansion = 4

    def __init__(self, cin, width, stride=1):
        super().__init__()
        cout = width * self.expansion
        self.a = ConvBN(cin, width, 1)
        self.b = ConvBN(width, width, 3, stride)
        self.c = ConvBN(width, cout, 1)
        self.sc = ConvBN(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.relu(self.a(x))
        y = self.relu(self.b(y))
        return self.relu(self.c(y) + self.sc(x))


class ResNet(nn.Module):
    """A ResNet: stem, four (or fewer) stages of blocks, global average pool, linear classifier.

    Parameters
    ----------
    block : type
        :class:`BasicBlock` or :class:`Bottleneck`.
    depths : sequence of int
        Blocks per stage.
    widths : sequence of int
        Width of each stage (a bottleneck's output is four times this).
    classes : int
    in_channels : int
    imagenet_stem : bool
        The 7x7/2 convolution and 3x3/2 max-pool of ImageNet ResNets; otherwise one 3x3
        convolution at full resolution (for 8x8 digits).
    """

    def __init__(self, block, depths, widths, classes, in_channels=3, imagenet_stem=True):
        super().__init__()
        stem_width = widths[0] if not imagenet_stem else 64
        if imagenet_stem:
            self.stem = nn.Sequential(ConvBN(in_channels, stem_width, 7, 2), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(ConvBN(in_channels, stem_width, 3), nn.ReLU(inplace=True))
        stages = []
        cin = stem_width
        for index, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for position in range(depth):
                stride = 2 if index > 0 and position == 0 else 1
                blocks.append(block(cin, width, stride))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class ConvBN1d(ConvBN):
    """A ``1 x k`` convolution along a sequence (a 2-D convolution of height 1) and BatchNorm.

    Being a :class:`ConvBN` of ``nn.Conv2d``, it folds, quantizes and exports like every other
    convolution of the project.
    """

    def __init__(self, cin, cout, kernel, stride=1):
        nn.Module.__init__(self)
        self.conv = nn.Conv2d(cin, cout, (1, kernel), (1, stride), (0, kernel // 2), bias=False)
        self.bn = nn.BatchNorm2d(cout)


class Mnist1dNet(nn.Module):
    """A 1-D CNN for MNIST-1D: five ``1 x k`` convolutions, global average pool, linear.

    32, 64, 64, 128 and 128 channels (kernels 5, 5, 3, 3, 3; the second and fourth with stride
    2, 40 -> 20 -> 10 positions), 97,920 weights: enough that per-layer costs (headers, tables,
    biases) stay a few percent of a sub-bit file, and layers of very different sizes (160 to
    49,152 weights) for the allocation to tell apart.
    """

    def __init__(self, classes=10):
        super().__init__()
        relu = nn.ReLU(inplace=True)
        self.features = nn.Sequential(
            ConvBN1d(1, 32, 5), relu, ConvBN1d(32, 64, 5, 2), relu, ConvBN1d(64, 64, 3), relu,
            ConvBN1d(64, 128, 3, 2), relu, ConvBN1d(128, 128, 3), relu)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


#: name -> (constructor, input shape (C, H, W), classes)
MODELS = {
    # ~306k weights in 13 tensors over 682 output channels: enough weights per channel that the
    # per-channel costs (biases, section headers) stay small against the coded weights.
    "digits": (lambda: ResNet(BasicBlock, (1, 1, 1), (32, 64, 128), 10, 1, False), (1, 8, 8), 10),
    # For tests: the same shape of network, a hundred times smaller.
    "digits-tiny": (lambda: ResNet(BasicBlock, (1, 1), (8, 16), 10, 1, False), (1, 8, 8), 10),
    # MNIST-1D (sw.data.mnist1d): sequences of 40 as (1, 1, 40)
    "mnist1d": (Mnist1dNet, (1, 1, 40), 10),
    "resnet18": (lambda: ResNet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), 1000),
                 (3, 224, 224), 1000),
    "resnet50": (lambda: ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), 1000),
                 (3, 224, 224), 1000),
}


def build_model(name: str, seed: int = 0) -> nn.Module:
    """A freshly initialised model (with BatchNorm) of one of :data:`MODELS`."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    torch.manual_seed(seed)
    return MODELS[name][0]()


def input_shape(name: str) -> tuple:
    return MODELS[name][1]


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every :class:`ConvBN` replaced by one convolution with a bias.

    Uses the BatchNorm's running statistics: ``w' = w * gamma / sigma`` per output channel and
    ``b' = beta - mean * gamma / sigma``, so the copy computes what ``model.eval()`` computes.
    """
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ConvBN):
                conv, bn = child.conv, child.bn
                folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                   conv.stride, conv.padding, bias=True)
                factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                folded.weight.copy_(conv.weight * factor[:, None, None, None])
                folded.bias.copy_(bn.bias - bn.running_mean * factor)
                setattr(parent, name, folded)
    return model


def weight_count(model: nn.Module) -> int:
    """Number of convolution and linear weights (the tensors that get coded)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
