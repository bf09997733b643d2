"""The job controller: an HTTP service and web pages through which a group submits fits and sees them.

A layer over the others (submission, job directories, job states, figures and report, the sandbox);
nothing below imports it. `bumps_mpi.service:create_app` is the ASGI application's factory.
"""

from .app import create_app

__all__ = ["create_app"]
