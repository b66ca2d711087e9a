"""distill: data-free knowledge distillation into DearKD vision-transformer students."""

from distill import models  # noqa: F401  (registers the timm models)
