"""A linear SVM on fixed features: the classifier the paper trains on its transfer descriptors.

One-vs-rest, squared hinge loss (the L2-SVM of liblinear's default solver) with an L2 penalty, solved
in full batch by L-BFGS. ``C`` is the usual inverse regularisation strength; with a validation split
it is picked from a grid by validation accuracy, as the paper picks it by cross-validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vgg_toolkit import VggtkError

C_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)  # descriptors are unit-length: useful C runs high


@dataclass
class LinearSVM:
    weight: torch.Tensor  # (classes, D)
    bias: torch.Tensor  # (classes,)
    c: float

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        return features.float() @ self.weight.T + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.scores(features).argmax(1)


def fit_linear_svm(features: torch.Tensor, labels: torch.Tensor, num_classes: int, c: float = 1.0,
                   max_iter: int = 300) -> LinearSVM:
    """Minimise 0.5 |W|^2 + C sum_i sum_k max(0, 1 - t_ik (w_k . x_i + b_k))^2, t_ik = +1 if y_i = k else -1
    (divided by N for the solver's sake; the bias is not penalised)."""
    if features.ndim != 2 or len(features) != len(labels):
        raise VggtkError(f"features must be (N, D) with N labels; got {tuple(features.shape)} and {len(labels)}")
    if c <= 0:
        raise VggtkError(f"C must be positive, got {c}")
    x = features.double()
    n = len(x)
    targets = torch.full((n, num_classes), -1.0, dtype=torch.float64)
    targets[torch.arange(n), labels.long()] = 1.0
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, history_size=20, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        margins = (1 - targets * (x @ weight.T + bias)).clamp(min=0)
        loss = 0.5 * weight.pow(2).sum() / (c * n) + margins.pow(2).sum() / n
        loss.backward()
        return loss

    optimizer.step(objective)
    return LinearSVM(weight.detach().float(), bias.detach().float(), c)


def accuracy(svm: LinearSVM, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """Top-1 accuracy and mean class recall (the paper's Caltech measure), in percent."""
    predicted = svm.predict(features)
    hit = (predicted == labels).float()
    recalls = [hit[labels == k].mean().item() for k in range(num_classes) if (labels == k).any()]
    return {"accuracy": 100 * hit.mean().item(), "mean_class_recall": 100 * sum(recalls) / len(recalls)}


def probe(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], num_classes: int,
          val: tuple[torch.Tensor, torch.Tensor] | None = None, c: float | None = None) -> dict:
    """Fit on ``train`` (C given, or picked on ``val`` from C_GRID, else 1) and score ``test``."""
    grid = {}
    if c is None and val is not None:
        for candidate in C_GRID:
            grid[candidate] = accuracy(fit_linear_svm(*train, num_classes, candidate), *val, num_classes)["accuracy"]
        c = max(grid, key=grid.get)
    svm = fit_linear_svm(*train, num_classes, 1.0 if c is None else c)
    return {"c": svm.c, "val_accuracy_by_c": grid, **accuracy(svm, *test, num_classes)}
