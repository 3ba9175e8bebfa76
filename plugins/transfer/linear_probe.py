"""A linear SVM on fixed features: the classifier the paper trains on its transfer descriptors.

One-vs-rest, squared hinge loss with an L2 penalty on the weights (the L2-SVM of liblinear's default
solver; the bias is not penalised), minimised in the primal by a truncated Newton method: conjugate
gradients on the generalised Hessian, a backtracking line search, and a stop when the gradient has
fallen to ``tol`` of its size at zero. The objective is convex and piecewise quadratic, so Newton's
method reaches the optimum in few steps where first-order methods crawl at large C; a fit that stops
short says so. ``C`` is the usual inverse regularisation strength; with a validation split it is
picked from a grid by validation accuracy, as the paper picks it by cross-validation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vgg_toolkit import VggtkError

C_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)  # descriptors are unit-length: useful C runs high


@dataclass
class LinearSVM:
    weight: torch.Tensor  # (classes, D)
    bias: torch.Tensor  # (classes,)
    c: float
    converged: bool = True
    newton_steps: int = 0
    gradient: float = 0.0  # the final gradient's norm, as a fraction of its norm at zero

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        return features.float() @ self.weight.T + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.scores(features).argmax(1)


def svm_objective(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                  c: float) -> torch.Tensor:
    """0.5 |W|^2 + C sum_i sum_k max(0, 1 - t_ik (w_k . x_i + b_k))^2, with t_ik = +1 if y_i = k else -1."""
    targets = -torch.ones(len(labels), weight.shape[0], dtype=weight.dtype)
    targets[torch.arange(len(labels)), labels.long()] = 1.0
    slack = (1 - targets * (features.to(weight.dtype) @ weight.T + bias)).clamp(min=0)
    return 0.5 * weight.pow(2).sum() + c * slack.pow(2).sum()


def fit_linear_svm(features: torch.Tensor, labels: torch.Tensor, num_classes: int, c: float = 1.0,
                   tol: float = 1e-6, max_steps: int = 200) -> LinearSVM:
    """Minimise ``svm_objective`` over the weights and biases of every class at once."""
    if features.ndim != 2 or len(features) != len(labels):
        raise VggtkError(f"features must be (N, D) with N labels; got {tuple(features.shape)} and {len(labels)}")
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise VggtkError(f"C must be a positive number, got {c}")
    n = len(features)
    x = torch.cat([features.double(), torch.ones(n, 1, dtype=torch.float64)], 1)  # the bias as a last column
    targets = -torch.ones(n, num_classes, dtype=torch.float64)
    targets[torch.arange(n), labels.long()] = 1.0
    penalised = torch.ones(x.shape[1], dtype=torch.float64)
    penalised[-1] = 0.0

    def evaluate(w):
        slack = 1 - targets * (x @ w.T)
        active = (slack > 0).double()
        value = 0.5 * (penalised * w * w).sum() + c * (slack.clamp(min=0) ** 2).sum()
        return value, penalised * w - 2 * c * ((active * slack * targets).T @ x), active

    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
    value, grad, active = evaluate(w)
    start = grad.norm()
    steps = 0
    while grad.norm() > tol * start and steps < max_steps:
        # The generalised Hessian at w: the penalty plus 2C X^T X over the samples inside their margin
        # (a tiny ridge keeps the bias direction definite when every sample is outside).
        def hessian_times(v, active=active):
            return (penalised + 1e-10) * v + 2 * c * ((active * (x @ v.T)).T @ x)

        direction = _conjugate_gradients(hessian_times, -grad, min(0.5, math.sqrt(grad.norm() / start)))
        slope, step = (grad * direction).sum(), 1.0
        while True:
            new_value, new_grad, new_active = evaluate(w + step * direction)
            if new_value <= value + 1e-4 * step * slope or step < 1e-12:
                break
            step /= 2
        w, value, grad, active = w + step * direction, new_value, new_grad, new_active
        steps += 1
    rel = float(grad.norm() / start) if start > 0 else 0.0
    return LinearSVM(w[:, :-1].float().contiguous(), w[:, -1].float().contiguous(), float(c), rel <= tol, steps, rel)


def _conjugate_gradients(apply, rhs: torch.Tensor, relative: float, max_iter: int = 1000) -> torch.Tensor:
    """An approximate solution of apply(d) = rhs, to ``relative`` of the right-hand side's norm."""
    d = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = (r * r).sum()
    goal = relative * rhs.norm()
    for _ in range(max_iter):
        ap = apply(p)
        alpha = rr / (p * ap).sum()
        d += alpha * p
        r -= alpha * ap
        new_rr = (r * r).sum()
        if new_rr.sqrt() <= goal:
            break
        p = r + (new_rr / rr) * p
        rr = new_rr
    return d


def accuracy(svm: LinearSVM, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """Top-1 accuracy and mean class recall (the paper's Caltech measure), in percent."""
    predicted = svm.predict(features)
    hit = (predicted == labels).float()
    recalls = [hit[labels == k].mean().item() for k in range(num_classes) if (labels == k).any()]
    return {"accuracy": 100 * hit.mean().item(), "mean_class_recall": 100 * sum(recalls) / len(recalls)}


def probe(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], num_classes: int,
          val: tuple[torch.Tensor, torch.Tensor] | None = None, c: float | None = None) -> dict:
    """Fit on ``train`` (C given, or picked on ``val`` from C_GRID, else 1) and score ``test``. ``short``
    lists the fits that stopped before the optimum: (C, Newton steps, final gradient fraction)."""
    grid, short = {}, []
    if c is None and val is not None:
        for candidate in C_GRID:
            svm = fit_linear_svm(*train, num_classes, candidate)
            grid[candidate] = accuracy(svm, *val, num_classes)["accuracy"]
            if not svm.converged:
                short.append((candidate, svm.newton_steps, svm.gradient))
        c = max(grid, key=grid.get)
    svm = fit_linear_svm(*train, num_classes, 1.0 if c is None else c)
    if not svm.converged and svm.c not in [s[0] for s in short]:
        short.append((svm.c, svm.newton_steps, svm.gradient))
    return {"c": svm.c, "val_accuracy_by_c": grid, "short": short, **accuracy(svm, *test, num_classes)}
