"""The one version string of bumps-mpi (pyproject.toml reads it from here: [tool.hatch.version])."""

__version__ = "0.1.0"
