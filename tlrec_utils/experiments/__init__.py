"""The method as one resumable pipeline, the paper's grid (local or SLURM) and its report."""
