"""Distil a student from a kdstream store with the Hugging Face Trainer.

    python examples/hf_trainer.py --logits-store teacher.zarr --model STUDENT_DIR --out runs/hf --max-steps 100
    accelerate launch --num-processes 2 examples/hf_trainer.py ...   # or: torchrun --nproc-per-node 2 …

The Trainer's own checkpoints, resume (--resume), gradient accumulation and multi-process launch
all apply; KDTrainer supplies the loss, the collator and the checks (kdstream/torch/hf_trainer.py).
"""
import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from kdstream.errors import run_main
from kdstream.torch import KDLoss, KDTrainer, StoreDataset


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logits-store", required=True, help="teacher store: path or URL, or several comma-separated")
    p.add_argument("--model", required=True, help="student: a Hugging Face model directory")
    p.add_argument("--out", required=True, help="output_dir: checkpoints and the final model")
    p.add_argument("--max-steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--loss", default="forward_kl", help="forward_kl | reverse_kl | jsd | ce_sampled")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--save-steps", type=int, default=500)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main():
    args = parse_args()
    training = TrainingArguments(
        output_dir=args.out, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr, save_steps=args.save_steps,
        seed=args.seed, logging_steps=1, report_to=[], dataloader_num_workers=2,
        remove_unused_columns=False,  # keep the teacher's columns (KDTrainer refuses True)
    )
    trainer = KDTrainer(
        model=AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32),
        args=training,
        train_dataset=StoreDataset(args.logits_store),
        processing_class=AutoTokenizer.from_pretrained(args.model),  # checked against the store
        kd_loss=KDLoss(args.loss, temperature=args.temperature),
    )
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    trainer.save_model(args.out)  # model + tokenizer, loadable with from_pretrained


if __name__ == "__main__":
    run_main(main)  # a KdError (wrong store, mismatched resume): one line, exit 2
