"""Distil a student from a kdstream store in a plain PyTorch loop (no kdstream trainer).

    python examples/plain_torch.py --logits-store teacher.zarr --model STUDENT_DIR --out runs/plain --max-steps 100
    torchrun --nproc-per-node 2 examples/plain_torch.py --logits-store teacher.zarr --model STUDENT_DIR \
        --out runs/plain --max-steps 100          # DDP: gloo on CPU, nccl on GPUs

STUDENT_DIR is a Hugging Face causal LM with the teacher's tokenizer; --out gets a checkpoint that
``AutoModelForCausalLM.from_pretrained`` loads.
"""
import argparse
import os

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer

from kdstream.errors import run_main
from kdstream.torch import KDLoss, StoreDataset, check_compatible, collate


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logits-store", required=True, help="teacher store: path or URL, or several comma-separated")
    p.add_argument("--model", required=True, help="student: a Hugging Face model directory")
    p.add_argument("--out", required=True, help="where the trained student is saved")
    p.add_argument("--max-steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--loss", default="forward_kl", help="forward_kl | reverse_kl | jsd | ce_sampled")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main():
    args = parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)

    data = StoreDataset(args.logits_store)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device)
    check_compatible(data, tokenizer, model)  # same ids as the teacher, before any step
    head = model.get_output_embeddings()
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)

    # Each process reads its own examples; every example once per epoch across processes.
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, sampler=sampler, collate_fn=collate,
                                         num_workers=2, persistent_workers=True)
    kd = KDLoss(args.loss, temperature=args.temperature)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    model.train()
    step, epoch = 0, 0
    while step < args.max_steps:
        sampler.set_epoch(epoch)
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            # Only the last position's logits come from the model; KDLoss runs the output layer
            # and the loss chunk by chunk, never holding the (B, L, V) logits.
            out = model(input_ids=batch["input_ids"], logits_to_keep=1, output_hidden_states=True, use_cache=False)
            loss = kd.from_hidden(out.hidden_states[-1], head, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if rank == 0:
                print(f"step {step} loss {loss.item():.4f}", flush=True)
            if step == args.max_steps:
                break
        epoch += 1
    if rank == 0:
        (model.module if world > 1 else model).save_pretrained(args.out)
        tokenizer.save_pretrained(args.out)
    if world > 1:
        # DDP's reducer holds the process group: free it while the group is still up. Freed after
        # destroy_process_group (at exit), gloo's teardown joined a thread forever (py-spy: rank 0
        # in ~ProcessGroupGloo under ~Reducer after main returned; seen once in a test run).
        model = out = loss = None
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    run_main(main)  # a KdError (a store that does not fit the student): one line, exit 2
