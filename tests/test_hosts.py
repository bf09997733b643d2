"""Several hosts (issue 24): the cluster's partition `hosts`, each node a slurmd in its own network
namespace with its own address, hostname, /tmp and /dev/shm (scripts/slurm-cluster, SLURM_HOSTS=3), so
ranks on two nodes reach each other only over TCP through the bridge, as on a real cluster.

Job directories are on the "shared file system" (shared_dir, under /var/tmp): the hosts' /tmp is their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    EXAMPLE,
    MODELS,
    ROOT,
    SMALL_DREAM,
    cli,
    cli_json,
    fake_job,
    serial_fit,
    wait_for_state,
    wait_until,
)

from bumps_mpi.text import rank_ranges


def _submit(shared_dir: Path, *args: str) -> dict:
    return cli_json("submit", EXAMPLE, *SMALL_DREAM, "--partition", "hosts", "--time", "10",
                    "--jobs-dir", shared_dir / "jobs", *args)  # fmt: skip


@pytest.mark.slurm
@pytest.mark.parametrize("nodes, ntasks", [(2, 4), (3, 3)])
def test_a_fit_across_hosts_is_the_serial_fit(hosts_cluster, shared_dir, nodes, ntasks):
    """The ranks run on different hosts (ranks.json says which), their messages cross the bridge, and the
    result is bit-identical to plain Bumps' serial fit with the same seed."""
    submitted = _submit(shared_dir, "--nodes", str(nodes), "--ntasks", str(ntasks))
    record = wait_for_state(submitted["job_id"], timeout=300)
    assert record["state"] == "COMPLETED", record
    job_dir = Path(submitted["job_dir"])
    ranks = json.loads((job_dir / "ranks.json").read_text())
    hosts = {r["rank"]: r["host"] for r in ranks}
    assert sorted(hosts) == list(range(ntasks)) and len(set(hosts.values())) == nodes, ranks
    assert set(hosts.values()) <= set(hosts_cluster)
    result = json.loads((job_dir / "result.json").read_text())
    reference = serial_fit(EXAMPLE, "dream", {"samples": 2000, "burn": 100}, seed=7)
    assert result["ranks"] == ntasks
    assert [p["best"] for p in result["parameters"]] == reference["best"]
    expected = {host: sorted(r for r, h in hosts.items() if h == host) for host in set(hosts.values())}
    assert record["hosts"] == expected  # status --json: the ranks on each host
    shown = cli("status", submitted["job_id"])
    assert shown.returncode == 0 and "COMPLETED" in shown.stdout, shown.stderr
    for host, ranks in expected.items():
        assert f"{rank_ranges(ranks)} on {host}" in shown.stdout, shown.stdout
    report = Path(cli_json("report", submitted["job_id"])["report"]).read_text()
    assert all(f"{rank_ranges(ranks)} on {host}" in report for host, ranks in expected.items())


@pytest.mark.slurm
def test_a_job_directory_the_nodes_cannot_see_fails_at_once_saying_so(hosts_cluster, isolated):
    """The login node's /tmp is not the hosts' (as on a real cluster): the job fails at its start, and
    status says why and what to do, instead of a bare FAILED with signal 53."""
    submitted = cli_json("submit", EXAMPLE, *SMALL_DREAM, "--partition", "hosts", "--nodes", "2",
                         "--ntasks", "2", "--time", "5", "--jobs-dir", isolated / "jobs")  # fmt: skip
    record = wait_for_state(submitted["job_id"], timeout=60)
    assert record["state"] == "FAILED", record
    assert "never started" in record["reason"] and "--jobs-dir" in record["reason"], record
    assert "file system every compute node sees" in cli("status", submitted["job_id"]).stdout


def test_the_hosts_of_a_job_are_plain_and_few_whatever_ranks_json_says(isolated):
    """ranks.json is the model's to write: status shows its host names without control sequences, short,
    and at most 64 of them; entries that are not a rank and a host are left out."""
    job_dir = fake_job(isolated / "job")
    forged = [{"rank": i, "host": f"n{i}\x1b]0;pwned\x07" + "x" * 100} for i in range(100)]
    forged += [{"rank": "0", "host": "h"}, {"rank": True, "host": "h"}, "junk", {"rank": 5}]
    (job_dir / "ranks.json").write_text(json.dumps(forged))
    record = cli_json("status", job_dir)[0]
    hosts = record["hosts"]
    assert len(hosts) == 64 and all(len(h) <= 64 and "\x1b" not in h and "\x07" not in h for h in hosts)
    assert sum(len(r) for r in hosts.values()) == 64


def test_rank_ranges():
    assert rank_ranges([5, 0, 1, 2, 7, 8]) == "0-2, 5, 7-8" and rank_ranges([3]) == "3"


def _json_of(*args) -> dict:
    """bumps-submit ARGS (--json given among them: before a `--`), its answer."""
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _on_host(host: str, signal_name: str = "KILL") -> None:
    """Every process of one host (its slurmd, its step daemons, its ranks): as when the node dies."""
    for pid in subprocess.run(
        ["ip", "netns", "pids", f"bmpi-{host}"], capture_output=True, text=True
    ).stdout.split():
        subprocess.run(["kill", f"-{signal_name}", pid], check=False)


def _restart_hosts() -> None:
    """The hosts that are gone start again (the cluster script starts every missing slurmd), and come
    back to service when they register (ReturnToService=2)."""
    env = {**os.environ, "SLURM_SKIP_SELFTEST": "1", "SLURM_SKIP_INSTALL": "1"}
    subprocess.run(
        [str(ROOT / "scripts" / "slurm-cluster"), "start"], capture_output=True, check=True, env=env
    )


@pytest.mark.slurm
def test_a_node_that_dies_under_a_fit_is_shown_and_the_fit_completes_on_the_others(hosts_cluster, shared_dir):
    """A host dies under a running 2-node fit: Slurm marks it down (SlurmdTimeout) and requeues the job
    (NODE_FAIL); status shows REQUEUED with the node and its ranks, never a final state in between; the
    fit continues from its checkpoint on the remaining hosts and completes."""
    submitted = _json_of(
        "submit", MODELS / "slow_peak.py", "--samples", "6000", "--burn", "100", "--seed", "3",
        "--partition", "hosts", "--nodes", "2", "--ntasks", "2", "--time", "10", "--checkpoint-every", "2",
        "--jobs-dir", shared_dir / "jobs", "--json", "--", "0.004",
    )  # fmt: skip
    job_id, job_dir = submitted["job_id"], Path(submitted["job_dir"])
    try:
        wait_until(
            lambda: (job_dir / "checkpoint.h5").exists() and (job_dir / "ranks.json").exists(), "a checkpoint"
        )
        ranks = json.loads((job_dir / "ranks.json").read_text())
        victim = next(r["host"] for r in ranks if r["rank"] == 1)
        assert victim != next(r["host"] for r in ranks if r["rank"] == 0), ranks
        died = time.monotonic()
        _on_host(victim)
        seen: list[str] = []

        def requeued() -> dict | None:
            record = cli_json("status", job_id)[0]
            seen.append(record["state"])
            return record if record["state"] == "REQUEUED" and record.get("node_failure") else None

        record = wait_until(
            requeued, lambda: f"a requeue after the node failure; states seen: {seen}", 120, 1
        )
        noticed = time.monotonic() - died
        print(f"node failure -> REQUEUED in status after {noticed:.0f} s")
        assert set(seen) <= {"RUNNING", "REQUEUED"}, seen  # never a final state in between
        assert (
            record["node_failure"].startswith(f"node {victim} (ranks 1)")
            and "NODE_FAIL" in record["node_failure"]
        )
        assert f"node {victim} (ranks 1) failed" in cli("status", job_id).stdout
        subprocess.run(
            ["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True
        )  # Slurm's 2 min
        done = wait_for_state(job_id, timeout=300)
        assert done["state"] == "COMPLETED", done
        runs = json.loads((job_dir / "runs.json").read_text())
        assert len(runs) == 2 and runs[1].get("resumed_from_step", 0) > 0, runs  # from the checkpoint
        assert victim not in {r["host"] for r in json.loads((job_dir / "ranks.json").read_text())}
    finally:
        subprocess.run(["scancel", job_id], check=False)
        _restart_hosts()
    wait_until(lambda: set(hosts_cluster) <= _idle_hosts(), "every host back in service", timeout=60)


def _idle_hosts() -> set[str]:
    shown = subprocess.run(
        ["sinfo", "-h", "-N", "-p", "hosts", "-t", "idle", "-o", "%N"], capture_output=True, text=True
    )
    return set(shown.stdout.split())


@pytest.mark.slurm
def test_drained_hosts_show_the_pending_reason_with_its_hint(hosts_cluster, shared_dir):
    """Every host drained while a job waits: status says why it waits and what will make it start."""
    subprocess.run(["scontrol", "update", "nodename=" + ",".join(hosts_cluster), "state=drain",
                    "reason=bumps-mpi test: maintenance"], check=True)  # fmt: skip
    try:
        submitted = _submit(shared_dir, "--nodes", "2", "--ntasks", "2")
        record = wait_until(
            lambda: (found := cli_json("status", submitted["job_id"])[0]).get("hint") and found,
            "a pending reason with a hint",
            timeout=60,
            every=1,
        )
        assert record["state"] == "PENDING" and record["never_starts"] is False, record
        assert "down or drained" in record["hint"] or "unavailable" in record["hint"], record
    finally:
        subprocess.run(
            ["scontrol", "update", "nodename=" + ",".join(hosts_cluster), "state=resume"], check=True
        )
    assert wait_for_state(submitted["job_id"], timeout=300)["state"] == "COMPLETED"


# listeners on host h3, outside MPI's port range and inside it
LISTEN = """
import socket, time
held = []
for port in (18080, 40500):
    held.append(socket.socket())
    held[-1].setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held[-1].bind(("10.252.0.13", port))
    held[-1].listen(8)
time.sleep(600)
"""


@pytest.mark.slurm
def test_the_sandbox_on_several_hosts_allows_tcp_only_on_the_mpi_ports(hosts_cluster, shared_dir, user):
    """Under --sandbox require, a fit on 2 hosts completes over TCP (MPI told the port range), while its
    model cannot connect to a listener on another host outside the range (nor bind outside it); a port
    inside the range stays reachable (what is left open, and said so in the README). Submitted by an
    ordinary account, as an attacker would be."""
    os.chown(shared_dir, user.pw_uid, user.pw_gid)
    env = {"HOME": user.pw_dir, "BUMPS_MPI_REGISTRY": str(shared_dir / "registry.jsonl")}
    env["BUMPS_MPI_CONFIG"] = str(shared_dir / "no-site.toml")  # none: the packaged defaults
    listener = subprocess.Popen(["ip", "netns", "exec", "bmpi-h3", sys.executable, "-c", LISTEN])
    try:
        done = cli(
            "submit", MODELS / "net_probe.py", *SMALL_DREAM, "--partition", "hosts", "--nodes", "2",
            "--ntasks", "2", "--time", "5", "--sandbox", "require", "--jobs-dir", shared_dir / "jobs",
            "--json", "--", "10.252.0.13:18080", "10.252.0.13:40500",
            env={**os.environ, **env}, user=user.pw_uid,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        submitted = json.loads(done.stdout)
        assert Path(submitted["job_dir"]).stat().st_uid == user.pw_uid
        record = wait_for_state(submitted["job_dir"], timeout=300)
    finally:
        listener.kill()
    assert record["state"] == "COMPLETED", record
    job_dir = Path(submitted["job_dir"])
    assert len(record["hosts"]) == 2, record
    found = json.loads((job_dir / "net-out.json").read_text())
    assert found == {
        "connect 10.252.0.13:18080": "blocked: EACCES",
        "connect 10.252.0.13:40500": "done",
        "bind 127.0.0.1:18081": "blocked: EACCES",
    }, found
    enforced = json.loads((job_dir / "result.json").read_text())["sandbox"]
    assert enforced["level"] == "require" and enforced["missing"] == [], enforced
    assert enforced["network"] == "TCP bind and connect only on ports 40000-40999 (MPI between nodes)"


@pytest.mark.slurm
def test_a_campaign_spreads_over_the_hosts_and_every_fit_completes(hosts_cluster, shared_dir):
    """Three one-node fits of one job array at once: they land on different hosts, and all complete."""
    from test_campaign import PEAK_FILE, follow_campaign, submit_json, write_data

    write_data(shared_dir / "data", [0.6, 0.8, 1.0])
    done = submit_json(
        "submit", PEAK_FILE, *SMALL_DREAM, "--partition", "hosts", "--ntasks", "2", "--time", "5",
        "--each", str(shared_dir / "data" / "*.dat"), "--jobs-dir", shared_dir / "jobs", "--", "{}",
    )  # fmt: skip
    final = follow_campaign(done["campaign_id"], timeout=300)[-1]
    assert final["counts"] == {"COMPLETED": 3}, final["counts"]
    ran_on = {host for r in final["records"] for host in r["hosts"]}
    assert len(ran_on) >= 2 and ran_on <= set(hosts_cluster), ran_on


@pytest.mark.slurm
def test_each_rank_keeps_its_temporary_files_on_its_own_node(
    hosts_cluster, shared_dir, isolated, monkeypatch
):
    """With node_tmp naming the nodes' own disk (here their /tmp), each rank's TMPDIR is a private directory
    there, writable in the sandbox, never in the shared job directory, and gone when the rank ends."""
    site = isolated / "site.toml"
    site.write_text('[profiles.default]\nnode_tmp = "/tmp"\n')
    monkeypatch.setenv("BUMPS_MPI_CONFIG", str(site))
    submitted = _json_of(
        "submit", MODELS / "net_probe.py", *SMALL_DREAM, "--partition", "hosts", "--nodes", "2",
        "--ntasks", "2", "--time", "5", "--sandbox", "require", "--jobs-dir", shared_dir / "jobs", "--json",
    )  # fmt: skip
    record = wait_for_state(submitted["job_id"], timeout=300)
    assert record["state"] == "COMPLETED", record
    job_dir = Path(submitted["job_dir"])
    for rank in (0, 1):
        where = json.loads((job_dir / f"tmp-{rank}.json").read_text())
        assert where["tmpdir"] == where["gettempdir"], where
        assert where["tmpdir"].startswith(f"/tmp/bumps-mpi-{submitted['job_id']}-{rank}-"), where
        assert not Path(where["tmpdir"]).exists()  # on the node's own /tmp, not this one's (and removed)
    assert not (job_dir / "tmp" / "scratch.bin").exists()  # nothing in the shared job directory
    enforced = json.loads((job_dir / "result.json").read_text())["sandbox"]
    assert enforced["tmp"].startswith("/tmp/bumps-mpi-") and enforced["missing"] == [], enforced
