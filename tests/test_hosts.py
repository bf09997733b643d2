"""Several hosts (issue 24): the cluster's partition `hosts`, each node a slurmd in its own network
namespace with its own address, hostname, /tmp and /dev/shm (scripts/slurm-cluster, SLURM_HOSTS=3), so
ranks on two nodes reach each other only over TCP through the bridge, as on a real cluster.

Job directories are on the "shared file system" (shared_dir, under /var/tmp): the hosts' /tmp is their own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import EXAMPLE, SMALL_DREAM, cli, cli_json, serial_fit, wait_for_state

pytestmark = pytest.mark.slurm


def _submit(shared_dir: Path, *args: str) -> dict:
    return cli_json("submit", EXAMPLE, *SMALL_DREAM, "--partition", "hosts", "--time", "10",
                    "--jobs-dir", shared_dir / "jobs", *args)  # fmt: skip


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
    shown = cli("status", submitted["job_id"])
    assert shown.returncode == 0 and "COMPLETED" in shown.stdout, shown.stderr
