"""The site administrator's commands: serve (the job controller) and its tokens and workers, worker (a
dispatch worker on a cluster's login node), sandbox (what this kernel confines, an AppArmor profile)."""

from __future__ import annotations

import time
from typing import Any

import click

from ..errors import BumpsMpiError
from .group import echo, emit_json, main


@main.group(invoke_without_command=True)
@click.option("--host", help="Address to listen on [127.0.0.1; beyond loopback only with authentication].")
@click.option("--port", type=int, help="Port [8470].")
@click.option(
    "--data-dir", type=click.Path(file_okay=False), help="Where the service keeps its records and fits."
)
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="The service's TOML configuration."
)
@click.pass_context
def serve(
    ctx: click.Context, host: str | None, port: int | None, data_dir: str | None, config_path: str | None
) -> None:
    """Run the job controller: web pages and a JSON API through which a group submits and follows fits."""
    ctx.obj = {"config": _service_config(config_path, host=host, port=port, data_dir=data_dir)}
    if ctx.invoked_subcommand is not None:
        return
    try:
        import uvicorn

        from ..service import create_app
    except ImportError as exc:
        raise BumpsMpiError(
            f"the job controller needs its extra: pip install 'bumps-mpi[service]' ({exc})"
        ) from None
    config = ctx.obj["config"]
    echo(
        f"bumps-mpi job controller on http://{config.host}:{config.port} (data in {config.data_dir})",
        err=True,
    )
    # proxy_headers off: who a request comes from is the service's own business (auth.py), never a header's
    uvicorn.run(
        create_app(config), host=config.host, port=config.port, log_level="warning", proxy_headers=False
    )


def _service_config(path: str | None, **overrides: Any) -> Any:
    from pathlib import Path

    from ..service.settings import load

    return load(Path(path) if path else None, **overrides)


@serve.group()
def token() -> None:
    """The job controller's users and their tokens."""


@token.command(name="add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="An administrator: sees and cancels every fit.")
@click.pass_context
def token_add(ctx: click.Context, name: str, admin: bool) -> None:
    """Make a token for NAME (made if new) and print it: it is shown this once, stored only as a hash."""
    import re

    from ..service.store import Store

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", name):
        raise BumpsMpiError(f"user name {name!r} is not allowed: letters, digits and ._@- (at most 64)")
    click.echo(Store.of(ctx.obj["config"]).add_token(name, admin))


@token.command(name="revoke")
@click.argument("name")
@click.pass_context
def token_revoke(ctx: click.Context, name: str) -> None:
    """Revoke every token of NAME and end their sessions now."""
    from ..service.store import Store

    count = Store.of(ctx.obj["config"]).revoke(name)
    echo(f"revoked {count} token(s) of {name}")


@serve.command(name="worker-token")
@click.pass_context
def worker_token(ctx: click.Context) -> None:
    """Make a one-time token with which one worker registers (dispatch mode); it is shown this once."""
    from ..service.dispatch import Queue
    from ..service.store import Store

    config = ctx.obj["config"]
    click.echo(Queue(config, Store.of(config)).registration_token())


@serve.command(name="worker-list")
@click.pass_context
def worker_list(ctx: click.Context) -> None:
    """The registered workers: name, id, labels, capacity, last heartbeat, fits in flight."""
    from ..service.dispatch import Queue
    from ..service.store import Store

    config = ctx.obj["config"]
    for row in Queue(config, Store.of(config)).workers():
        seen = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["last_seen"]))
            if row["last_seen"]
            else "never"
        )
        labels = ",".join(f"{k}={v}" for k, v in row["labels"].items()) or "-"
        echo(f"{row['name']:<20} {row['id']:<11} {labels:<24} capacity {row['capacity']:<3} "
             f"in flight {row['in_flight']:<3} last seen {seen}")  # fmt: skip


@serve.command(name="worker-revoke")
@click.argument("worker")
@click.pass_context
def worker_revoke(ctx: click.Context, worker: str) -> None:
    """Revoke WORKER (name or id): its credential stops working, its fits go back to the queue."""
    from ..service.dispatch import Queue
    from ..service.store import Store

    config = ctx.obj["config"]
    count = Queue(config, Store.of(config)).revoke_worker(worker)
    if not count:
        raise BumpsMpiError(f"no worker {worker!r}: see 'bumps-submit serve worker-list'")
    echo(f"revoked {count} worker(s) named {worker}; their fits go back to the queue")


@main.command()
@click.option("--controller", required=True, help="The job controller's URL (https://...).")
@click.option("--capacity", type=int, default=1, show_default=True, help="Fits in flight here at most.")
@click.option("--profile", help="Site profile the fits are submitted with (Slurm).")
@click.option("--local", is_flag=True, help="Run the fits here under mpiexec instead of Slurm.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="What fits may ask for.")
@click.option("--name", help="This worker's name [the host name].")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default="~/.local/share/bumps-mpi/worker",
    show_default=True,
    help="Its credential and its fits in flight.",
)
@click.option("--registration-token", envvar="BUMPS_MPI_REGISTRATION_TOKEN", help="To register, once.")
def worker(
    controller: str, capacity: int, profile: str | None, local: bool, labels: tuple[str, ...],
    name: str | None, state_dir: str, registration_token: str | None,
) -> None:  # fmt: skip
    """Pull fits from a job controller in dispatch mode and run them on this cluster (or here)."""
    from pathlib import Path

    from ..service.worker import Worker

    if capacity < 1:
        raise BumpsMpiError(f"--capacity must be at least 1, got {capacity}")
    found = {}
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep or not key:
            raise BumpsMpiError(f"--label {label!r}: give KEY=VALUE")
        found[key] = value
    if not controller.startswith(("http://", "https://")):
        raise BumpsMpiError(f"--controller {controller!r}: give the controller's http(s) URL")
    runner = Worker(
        controller, Path(state_dir).expanduser(), capacity, found, profile, local, name,
        registration_token, say=lambda line: echo(f"bumps-submit worker: {line}", err=True),
    )  # fmt: skip
    echo(f"bumps-submit worker: pulling up to {capacity} fit(s) from {controller}", err=True)
    runner.run()


@token.command(name="list")
@click.pass_context
def token_list(ctx: click.Context) -> None:
    """Every token's user, role and dates (never the token)."""
    from ..service.store import Store

    for row in Store.of(ctx.obj["config"]).tokens():
        state = "revoked" if row["revoked"] else "active"
        role = "admin" if row["admin"] else "user"
        since = time.strftime("%Y-%m-%d", time.localtime(row["created"]))
        echo(f"{row['user']:<24} {role:<6} {state:<8} since {since}")


@main.group(name="sandbox")
def sandbox_group() -> None:
    """The sandbox that confines every model to its job: what this kernel enforces, an AppArmor profile."""


@sandbox_group.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def sandbox_status(as_json: bool) -> None:
    """What the sandbox can enforce on this machine's kernel (Landlock ABI), at each level."""
    from ..config import load_settings
    from ..sandbox import landlock

    abi = landlock.abi_version()
    level = load_settings()["sandbox"]
    features = {
        "files (read-only environment, read-write job directory)": 1,
        "truncation": 3,
        "TCP bind and connect": 4,
        "signals and abstract Unix sockets": 6,
    }
    found = {"abi": abi, "level": level, "features": {name: abi >= need for name, need in features.items()}}
    if as_json:
        emit_json(found)
        return
    echo(f"Landlock ABI {abi} on this kernel; sandbox level here: {level}")
    for name, need in features.items():
        echo(f"  {'yes' if abi >= need else 'no ':<4} {name} (ABI {need})")


@sandbox_group.command(name="apparmor-profile")
@click.option("--jobs-root", type=click.Path(), help="Where the account's job directories are [jobs_dir].")
def sandbox_apparmor_profile(jobs_root: str | None) -> None:
    """Print an AppArmor profile for the account that runs jobs (paths from this installation)."""
    import os
    from pathlib import Path

    from ..config import load_settings
    from ..sandbox.policy import apparmor_profile

    root = jobs_root or os.path.expandvars(os.path.expanduser(load_settings()["jobs_dir"]))
    click.echo(apparmor_profile(str(Path(root).absolute())), nl=False)
