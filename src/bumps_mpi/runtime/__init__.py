"""The job runtime, on every rank: the job itself, the MPI mapper, checkpoints, progress, the watchdog,
the fit (Bumps on both sides), and Bumps' own command line with our mapper."""
