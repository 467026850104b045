"""`torchrun --nproc_per_node N -m kdstream.distill …`: the distill command, data-parallel."""
from kdstream.cli import distill_main

if __name__ == "__main__":
    distill_main()
