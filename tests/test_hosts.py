"""Several hosts (issue 24): the cluster's partition `hosts`, each node a slurmd in its own network
namespace with its own address, hostname, /tmp and /dev/shm (scripts/slurm-cluster, SLURM_HOSTS=3), so
ranks on two nodes reach each other only over TCP through the bridge, as on a real cluster.

Job directories are on the "shared file system" (shared_dir, under /var/tmp): the hosts' /tmp is their own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import EXAMPLE, SMALL_DREAM, cli, cli_json, fake_job, serial_fit, wait_for_state

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
