"""`python -m kdstream COMMAND …`, and `torchrun --nproc_per_node N -m kdstream distill …` for
data-parallel training."""
from kdstream.cli import main

if __name__ == "__main__":
    main()
