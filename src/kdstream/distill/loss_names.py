"""Names of the losses and tail treatments, without torch: the options and the CLI validate
them, and `distill --help` must not wait for torch to import."""

KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")  # names accepted by kd_loss(kind=...)
CE_SAMPLED = "ce_sampled"  # sampled_ce_loss: cross-entropy against a sampled store's draws
HARD = "hard"  # hard_ce_loss: cross-entropy on the teacher's top-1 token (word-level hard KD)
TAILS = ("bucket", "renormalize")
