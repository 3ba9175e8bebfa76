"""A tiny real training set-up for the loop's tests: Fashion-MNIST images (padded to 32x32, so they are
already the crops and need no augmentation) and a narrow VGG-A, planned as `vggtk train` plans a run."""

from vgg_toolkit import DataFacts, TrainScale
from vgg_toolkit.train.batches import InMemorySource
from vgg_toolkit.train.config import parse_config
from vgg_toolkit.train.plan import plan_run

from realdata import fashion_sample

NET = {"width": 1 / 8, "fc_dim": 32, "init": "kaiming"}


def tiny_run(samples: int = 256, val_samples: int = 64, source_class=InMemorySource, model=None, **values):
    """(plan, source) for ``samples`` training images; ``values`` are TrainConfig keys."""
    (x, y), (vx, vy) = fashion_sample(samples), fashion_sample(val_samples, split="test")
    mean = x.float().mean().item()
    facts = DataFacts(tuple(f"class{i}" for i in range(10)), 1, (mean, mean, mean), 32, TrainScale(32, 32))
    plan = plan_run(parse_config({"arch": "vgg-a", "model": {**NET, **(model or {})}, **values}), facts)
    return plan, source_class((x, y), (vx, vy), num_classes=10, preprocessing=plan.preprocessing)
