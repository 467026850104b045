"""Train students (KD from a logit store) and CE models (teacher, baseline) with one trainer."""
from kdstream.distill.trainer import DistillOptions, train

__all__ = ["DistillOptions", "train"]
