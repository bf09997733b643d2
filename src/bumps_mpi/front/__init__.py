"""The front: the bumps-submit command line and the Python API behind it, submission and its checks,
and the per-user list of jobs."""
