"""Train students (KD from a logit store) and CE models (teacher, baseline) with one trainer."""
from kdstream.distill.options import DistillOptions
from kdstream.distill.trainer import train

__all__ = ["DistillOptions", "train"]
