"""Train from a kdstream store in any PyTorch stack: one import.

    from kdstream.torch import StoreDataset, collate, KDLoss, check_compatible
    ds = StoreDataset("teacher.zarr")                      # or "a.zarr,b.zarr", s3://…, hf://…
    check_compatible(ds, tokenizer, model)                 # same ids as the teacher, before step 0
    batch = collate([ds[0], ds[1]])                        # input_ids (B, L), topk_* (B, L-1, k)
    loss = KDLoss("forward_kl", temperature=1.0)(model(input_ids=batch["input_ids"]).logits, batch)

Hugging Face Trainer / TRL: ``KDTrainer`` (a Trainer with the KD loss) or ``kd_trainer(cls)`` for
any Trainer subclass (hf_trainer.py). Runnable examples: examples/ in the repository.
"""
from kdstream.torch.compat import check_compatible
from kdstream.torch.dataset import StoreDataset, collate
from kdstream.torch.loss import KDLoss

__all__ = ["KDLoss", "KDTrainer", "StoreDataset", "check_compatible", "collate", "kd_trainer"]


def __getattr__(name: str):
    if name in ("KDTrainer", "kd_trainer", "KDTrainerMixin"):  # transformers.Trainer: imported on first use
        from kdstream.torch import hf_trainer

        return getattr(hf_trainer, name)
    raise AttributeError(f"module 'kdstream.torch' has no attribute {name!r}")
