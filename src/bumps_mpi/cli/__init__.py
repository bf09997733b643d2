"""bumps-submit, the command line: the group and its output conventions (group), the user's commands
(submit, user, with campaigns and following), the administrator's (admin), and the printers (output).
Importing the package registers every command on `main`."""

from . import admin, submit, user  # noqa: F401  (each registers its commands on main)
from .group import main

__all__ = ["main"]
