"""Layer 6, launching: validate and prepare once, then start ranks here or join torchrun / SLURM ones."""
