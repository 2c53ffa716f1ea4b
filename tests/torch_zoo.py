"""PyTorch models with the state_dict key names of Li et al.'s (loss-landscape, cifar10/models)
and Garipov et al.'s (dnn-mode-connectivity, models/) CIFAR networks, written for the tests of
landscape_jax.adapters.torch_weights and scripts/make_torch_fixtures.py (which imports this file
by path). Only the module names, shapes and forward computations follow those repositories;
`width` scales the channels so that the fixtures stay small. Needs PyTorch.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CASES", "build"]


def _w(channels, width):
  return max(1, int(round(channels * width)))


class _LiBlock(nn.Module):
  def __init__(self, cin, cout, stride, shortcut):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.use_shortcut = shortcut
    self.shortcut = nn.Sequential()
    if shortcut and (stride != 1 or cin != cout):
      self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                    nn.BatchNorm2d(cout))

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(y + self.shortcut(x)) if self.use_shortcut else F.relu(y)


class LiResNet(nn.Module):
  """Li et al.'s ResNet_cifar (depth 6n + 2)."""

  def __init__(self, depth, width=1.0, num_classes=10, shortcut=True):
    super().__init__()
    n, c = (depth - 2) // 6, _w(16, width)
    self.conv1 = nn.Conv2d(3, c, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(c)
    cin = c
    for s, ch in enumerate((16, 32, 64)):
      blocks = []
      for b in range(n):
        blocks.append(_LiBlock(cin, _w(ch, width), 2 if s and not b else 1, shortcut))
        cin = _w(ch, width)
      setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
    self.linear = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


class LiVGG9(nn.Module):
  """Li et al.'s VGG9: [conv, BN, ReLU] x 7 with ceil-mode pools; Linear-BN-ReLU; classifier."""

  def __init__(self, width=1.0, num_classes=10, size=32):
    super().__init__()
    layers, cin = [], 3
    for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M"):
      if item == "M":
        layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        size = -(-size // 2)
      else:
        layers += [nn.Conv2d(cin, _w(item, width), 3, padding=1), nn.BatchNorm2d(_w(item, width)),
                   nn.ReLU()]
        cin = _w(item, width)
    self.features = nn.Sequential(*layers)
    self.fc = nn.Sequential(nn.Linear(cin * size * size, cin), nn.BatchNorm1d(cin), nn.ReLU())
    self.classifier = nn.Linear(cin, num_classes)

  def forward(self, x):
    return self.classifier(self.fc(self.features(x).flatten(1)))


class _LiDense(nn.Module):
  def __init__(self, cin, growth):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(4 * growth)
    self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

  def forward(self, x):
    y = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
    return torch.cat([y, x], 1)


class _LiTransition(nn.Module):
  def __init__(self, cin, cout):
    super().__init__()
    self.bn = nn.BatchNorm2d(cin)
    self.conv = nn.Conv2d(cin, cout, 1, bias=False)

  def forward(self, x):
    return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class LiDenseNet(nn.Module):
  """Li et al.'s DenseNet (densenet_cifar: 4 dense blocks, reduction 0.5)."""

  def __init__(self, num_layers=(6, 12, 24, 16), growth=12, num_classes=10):
    super().__init__()
    c = 2 * growth
    self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
    for s, n in enumerate(num_layers):
      layers = []
      for _ in range(n):
        layers.append(_LiDense(c, growth))
        c += growth
      setattr(self, f"dense{s + 1}", nn.Sequential(*layers))
      if s < len(num_layers) - 1:
        setattr(self, f"trans{s + 1}", _LiTransition(c, c // 2))
        c //= 2
    self.bn = nn.BatchNorm2d(c)
    self.linear = nn.Linear(c, num_classes)
    self.blocks = len(num_layers)

  def forward(self, x):
    x = self.conv1(x)
    for s in range(self.blocks):
      x = getattr(self, f"dense{s + 1}")(x)
      if s < self.blocks - 1:
        x = getattr(self, f"trans{s + 1}")(x)
    return self.linear(F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1))


class GaripovVGG16(nn.Module):
  """Garipov et al.'s VGG16: layer_blocks of convs (+BN), 2x2 pools, 3 Linear layers."""

  def __init__(self, width=1.0, num_classes=10, batch_norm=False):
    super().__init__()
    self.layer_blocks = nn.ModuleList()
    cin = 3
    for stage in ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)):
      block = nn.ModuleList()
      for ch in stage:
        block.append(nn.Conv2d(cin, _w(ch, width), 3, padding=1))
        if batch_norm:
          block.append(nn.BatchNorm2d(_w(ch, width)))
        cin = _w(ch, width)
      self.layer_blocks.append(block)
    h = _w(512, width)
    self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(cin, h), nn.ReLU(), nn.Dropout(),
                                    nn.Linear(h, h), nn.ReLU(), nn.Linear(h, num_classes))

  def forward(self, x):
    for block in self.layer_blocks:
      for layer in block:
        x = layer(x)
        if isinstance(layer, nn.BatchNorm2d) or not any(
            isinstance(m, nn.BatchNorm2d) for m in block):
          x = F.relu(x)
      x = F.max_pool2d(x, 2, 2)
    return self.classifier(x.flatten(1))


class _PreBlock(nn.Module):
  def __init__(self, cin, planes, stride, bottleneck):
    super().__init__()
    cout = 4 * planes if bottleneck else planes
    self.bottleneck = bottleneck
    self.bn1 = nn.BatchNorm2d(cin)
    if bottleneck:
      self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(planes)
      self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
    else:
      self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

  def forward(self, x):
    y = self.conv1(F.relu(self.bn1(x)))
    y = self.conv2(F.relu(self.bn2(y)))
    if self.bottleneck:
      y = self.conv3(F.relu(self.bn3(y)))
    return y + (x if self.downsample is None else self.downsample(x))


class GaripovPreResNet(nn.Module):
  """Garipov et al.'s PreResNet (basic blocks for depth 6n + 2, bottlenecks for 9n + 2)."""

  def __init__(self, depth, width=1.0, num_classes=10, bottleneck=False):
    super().__init__()
    n = (depth - 2) // (9 if bottleneck else 6)
    c = _w(16, width)
    self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
    for s, planes in enumerate((16, 32, 64)):
      blocks = []
      for b in range(n):
        blocks.append(_PreBlock(c, _w(planes, width), 2 if s and not b else 1, bottleneck))
        c = _w(planes, width) * (4 if bottleneck else 1)
      setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
    self.bn = nn.BatchNorm2d(c)
    self.fc = nn.Linear(c, num_classes)

  def forward(self, x):
    x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
    return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1))


class _WideBasic(nn.Module):
  def __init__(self, cin, planes, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv1 = nn.Conv2d(cin, planes, 3, padding=1, bias=True)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=True)
    self.shortcut = nn.Sequential()
    if stride != 1 or cin != planes:
      self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=True))

  def forward(self, x):
    y = self.conv1(F.relu(self.bn1(x)))
    return self.conv2(F.relu(self.bn2(y))) + self.shortcut(x)


class GaripovWideResNet(nn.Module):
  """Garipov et al.'s WideResNet (depth 6n + 4, widen factor k)."""

  def __init__(self, depth, k, num_classes=10):
    super().__init__()
    n = (depth - 4) // 6
    self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=True)
    c = 16
    for s, ch in enumerate((16 * k, 32 * k, 64 * k)):
      blocks = []
      for b in range(n):
        blocks.append(_WideBasic(c, ch, 2 if s and not b else 1))
        c = ch
      setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
    self.bn1 = nn.BatchNorm2d(c, momentum=0.9)
    self.linear = nn.Linear(c, num_classes)

  def forward(self, x):
    x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
    return self.linear(F.adaptive_avg_pool2d(F.relu(self.bn1(x)), 1).flatten(1))


# fixture name: (zoo name, zoo overrides, PyTorch constructor)
CASES = {
  "li_resnet8": ("resnet8", {"width": 0.25}, lambda: LiResNet(8, 0.25)),
  "li_resnet8_noshort": ("resnet8_noshort", {"width": 0.25},
                         lambda: LiResNet(8, 0.25, shortcut=False)),
  "li_vgg9": ("vgg9_bn", {"width": 1 / 16}, lambda: LiVGG9(1 / 16)),
  "li_densenet": ("densenet_cifar", {"num_layers": (2, 2, 2, 2), "growth_rate": 4},
                  lambda: LiDenseNet((2, 2, 2, 2), 4)),
  "garipov_vgg16": ("vgg16", {"width": 1 / 32}, lambda: GaripovVGG16(1 / 32)),
  "garipov_preresnet8": ("preresnet8", {"width": 0.25}, lambda: GaripovPreResNet(8, 0.25)),
  "garipov_preresnet11_bottleneck": ("preresnet11", {"width": 0.25, "bottleneck": True},
                                     lambda: GaripovPreResNet(11, 0.25, bottleneck=True)),
  "garipov_wrn10_1": ("wrn10_1", {}, lambda: GaripovWideResNet(10, 1)),
}


def build(name: str, seed: int = 0) -> nn.Module:
  """The PyTorch model of fixture `name` in eval mode, with random weights and random BatchNorm
  parameters and running statistics (so that a wrong BN mapping changes the logits). Weights are
  He-normal (std sqrt(2 / fan_in)) and biases non-zero, so that the input still shapes the logits
  after a dozen layers without BatchNorm (PyTorch's default init shrinks the signal)."""
  torch.manual_seed(seed)
  model = CASES[name][2]()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d | nn.Linear):
        m.weight.normal_(0, (2.0 / m.weight[0].numel()) ** 0.5)
        if m.bias is not None:
          m.bias.normal_(0, 0.1)
      if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.2)
        m.running_mean.normal_(0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  return model.eval()
