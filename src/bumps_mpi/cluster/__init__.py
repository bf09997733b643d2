"""The cluster side: the sbatch text, Slurm's commands and accounting, job states, local runs under
mpiexec and their processes, the post-mortem of a dead rank."""
