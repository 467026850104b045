"""Run by test_example_scripts.py under torchrun (gloo): one epoch of StoreDataset through a
DistributedSampler and DataLoader workers; rank 0 writes every rank's example ids to ARGV[2]."""
import json
import sys

import torch
import torch.distributed as dist

from kdstream.torch import StoreDataset, collate

if __name__ == "__main__":
    dist.init_process_group("gloo")
    data = StoreDataset(sys.argv[1])
    sampler = torch.utils.data.DistributedSampler(data, shuffle=True, seed=7)
    sampler.set_epoch(1)
    loader = torch.utils.data.DataLoader(data, batch_size=3, sampler=sampler, collate_fn=collate, num_workers=2)
    mine = [i for batch in loader for i in batch["example_id"].tolist()]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if dist.get_rank() == 0:
        with open(sys.argv[2], "w") as f:
            json.dump(everyone, f)
    dist.destroy_process_group()
