"""distill: data-free knowledge distillation into DearKD vision-transformer students.

Python API::

    import distill
    distill.train(distill.build_config("configs/distill_digits.yaml", shards=["out/digits"], out="runs/d"))
    distill.evaluate_checkpoint("runs/d/last.pt", "data/digits/test")  # {"top1", "top5", "n"}
"""

from distill import models  # noqa: F401  (registers the timm models)
from distill.config import TrainConfig, build_config  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.evaluation import evaluate_checkpoint  # noqa: E402
from distill.train import train  # noqa: E402

__all__ = ["DistillError", "TrainConfig", "build_config", "evaluate_checkpoint", "train"]
