"""Temperature scaling and the calibration numbers reported for a run.

One scalar ``T`` divides the logits before softmax (Guo et al., 2017): it leaves the ranking of classes,
so accuracy, untouched and only makes the confidence match how often the model is right. During ``fit``
``T`` is fitted on each validation's logits and stored as ``checkpoint["calibration"]["temperature"]`` in the
checkpoints saved after it (see ``ConvNeXtClassifier.probabilities`` and ``lit_convnext.evaluation.end_of_fit``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

#: Confidence bins of the expected calibration error and the reliability diagram.
ECE_BINS = 15


#: The temperature is kept in [0.05, 20]: beyond that the validation set says nothing reliable about it.
LOG_T_MIN, LOG_T_MAX = math.log(0.05), math.log(20.0)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_images: int = 20_000) -> float:
    """The temperature minimising the negative log-likelihood of ``targets`` (LBFGS on ``log T``).

    One scalar is well determined by 20,000 images: larger sets are subsampled (seeded), so the fit takes
    seconds at 100,000 images and 1,000 classes on a CPU core, milliseconds on a GPU (it runs where the logits are).
    """
    if len(targets) > max_images:
        keep = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))[:max_images]
        logits, targets = logits[keep.to(logits.device)], targets[keep.to(targets.device)]
    # Called from validation hooks, which run under inference mode: fit with autograd on plain copies.
    with torch.inference_mode(False), torch.enable_grad():
        logits, targets = logits.detach().float().clone(), targets.detach().long().to(logits.device).clone()
        log_t = torch.zeros(1, requires_grad=True, device=logits.device)  # log keeps T positive without a constraint
        optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=50, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            # Bounded inside the objective: a set the model gets all right drives T towards 0, and unbounded
            # LBFGS line searches then overflow.
            loss = F.cross_entropy(logits / log_t.clamp(LOG_T_MIN, LOG_T_MAX).exp(), targets)
            loss.backward()
            return loss

        optimizer.step(closure)
    # The bounds guard against a degenerate set: all correct drives T to 0, all wrong to infinity.
    return float(log_t.detach().clamp(LOG_T_MIN, LOG_T_MAX).exp())


def calibration_error(probabilities: torch.Tensor, targets: torch.Tensor) -> float:
    """Expected calibration error (L1, equal-width confidence bins) of class probabilities."""
    return float(multiclass_calibration_error(probabilities.float(), targets.long(), probabilities.shape[1],
                                              n_bins=ECE_BINS, norm="l1"))


def reliability_bins(probabilities: torch.Tensor, targets: torch.Tensor) -> dict[str, list[float]]:
    """Per confidence bin: mean confidence, accuracy and image count (the reliability diagram's bars)."""
    confidence, predicted = probabilities.float().max(dim=1)
    correct = (predicted == targets).float()
    bins = torch.clamp((confidence * ECE_BINS).long(), max=ECE_BINS - 1)
    count = torch.bincount(bins, minlength=ECE_BINS).float()
    summed_conf = torch.bincount(bins, weights=confidence, minlength=ECE_BINS)
    summed_acc = torch.bincount(bins, weights=correct, minlength=ECE_BINS)
    safe = count.clamp(min=1)
    return {"confidence": (summed_conf / safe).tolist(), "accuracy": (summed_acc / safe).tolist(),
            "count": count.long().tolist()}


def calibration_summary(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> dict:
    """ECE and NLL before/after the temperature, with reliability bins for both (``calibration.json``)."""
    logits, targets = logits.float(), targets.long()
    summary: dict = {"temperature": temperature, "images": len(targets), "bins": ECE_BINS}
    for name, t in (("before", 1.0), ("after", temperature)):
        probabilities = (logits / t).softmax(dim=1)
        summary[f"ece_{name}"] = calibration_error(probabilities, targets)
        summary[f"nll_{name}"] = float(F.cross_entropy(logits / t, targets))
        summary[f"reliability_{name}"] = reliability_bins(probabilities, targets)
    return summary
