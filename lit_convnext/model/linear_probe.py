"""Linear probing of a timm ConvNeXt: which tensors are the backbone, freezing it, and its features computed once.

The probe trains the classifier (``net.get_classifier()``, timm's ``head.fc``) alone; everything before it is the
backbone: the stem, the stages, and the head's pretrained norm (and the hidden layer of an MLP head), so the
probe's input is exactly ``forward_head(..., pre_logits=True)``, the features that can be computed once.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.utils.data import DataLoader, Dataset


def backbone_modules(net: nn.Module) -> list[nn.Module]:
    """The leaf modules (and modules holding parameters themselves) of ``net`` other than its classifier, as
    Lightning's ``BaseFinetuning.flatten_modules`` lists them."""
    classifier = set(net.get_classifier().modules())
    return [m for m in BaseFinetuning.flatten_modules(net) if m not in classifier]


def backbone_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of ``net``'s state dict except the classifier's (copies), e.g. to check a probe left them."""
    classifier = {id(t) for t in net.get_classifier().state_dict(keep_vars=True).values()}
    return {k: v.detach().clone() for k, v in net.state_dict(keep_vars=True).items() if id(v) not in classifier}


def set_probing(net: nn.Module, probing: bool) -> None:
    """Freeze the backbone (no gradients, eval mode) while ``probing``; make it trainable in train mode after.

    Eval mode turns stochastic depth (and dropout) off in the frozen layers: the probe sees the same features every
    epoch, the ones :func:`compute_features` caches.
    """
    modules = backbone_modules(net)
    if probing:
        BaseFinetuning.freeze(modules, train_bn=False)
    else:
        BaseFinetuning.make_trainable(modules)
    for module in modules:
        module.train(not probing)


def features(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What the classifier of a timm ConvNeXt reads: pooled, normed (and MLP-projected) features."""
    return net.forward_head(net.forward_features(images), pre_logits=True)


class FeatureDataset(Dataset):
    """Backbone features with their targets, in place of a training set of images (``targets`` as the image
    datasets have them, for the balanced sampler)."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        self.features = features
        self.targets = targets

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[index], self.targets[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # One indexing for the whole batch instead of one per item (torch's DataLoader uses it when present).
        rows, targets = self.features[indices], self.targets[indices]
        return list(zip(rows, targets))


@torch.no_grad()
def compute_features(net: nn.Module, loader: DataLoader, device: torch.device) -> FeatureDataset:
    """Run the frozen backbone once over ``loader`` (deterministic transforms, in order) and keep its features on
    the host in float32, with the targets. Call it inside the run's precision context."""
    was_training = net.training
    net.eval()
    rows: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    try:
        for images, batch_targets in loader:
            rows.append(features(net, images.to(device, non_blocking=True)).float().cpu())
            targets.append(torch.as_tensor(batch_targets))
    finally:
        net.train(was_training)
    return FeatureDataset(torch.cat(rows), torch.cat(targets))
