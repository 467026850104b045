"""Distil a student from a kdstream store with TRL's SFTTrainer.

    python examples/trl_sft.py --logits-store teacher.zarr --model STUDENT_DIR --out runs/trl --max-steps 100
    accelerate launch --num-processes 2 examples/trl_sft.py ...

SFTTrainer's ``compute_loss_func`` only sees the model's outputs and labels, never the batch, so
the teacher's columns cannot reach it (TRL 1.x deprecates it and says to subclass);
``kd_trainer(SFTTrainer)`` is that subclass: SFTTrainer with KDTrainer's loss and checks. The store
is already tokenized, so TRL's dataset preparation is skipped (``skip_prepare_dataset``).
"""
import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from kdstream.errors import run_main
from kdstream.torch import KDLoss, StoreDataset, kd_trainer


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logits-store", required=True, help="teacher store: path or URL, or several comma-separated")
    p.add_argument("--model", required=True, help="student: a Hugging Face model directory")
    p.add_argument("--out", required=True, help="output_dir: checkpoints and the final model")
    p.add_argument("--max-steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--loss", default="forward_kl", help="forward_kl | reverse_kl | jsd | ce_sampled")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main():
    args = parse_args()
    config = SFTConfig(
        output_dir=args.out, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, seed=args.seed, logging_steps=1, report_to=[], save_strategy="no",
        remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True},
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),  # SFTConfig's default needs a GPU
    )
    trainer = kd_trainer(SFTTrainer)(
        model=AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32),
        args=config,
        train_dataset=StoreDataset(args.logits_store),
        processing_class=AutoTokenizer.from_pretrained(args.model),
        kd_loss=KDLoss(args.loss, temperature=args.temperature),
    )
    trainer.train()
    trainer.save_model(args.out)


if __name__ == "__main__":
    run_main(main)  # a KdError (a store that does not fit the student): one line, exit 2
