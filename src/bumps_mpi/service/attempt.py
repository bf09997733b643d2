"""One claimed fit on a dispatch worker, in a thread of its own: submit it (to Slurm or locally), keep
its lease, send its checkpoints and files, report its end; let it go when the lease is gone."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cluster import jobstate, processes, slurm
from ..cluster.states import JobState
from ..errors import BumpsMpiError, ModelCheckError, UsageError
from ..jobdir import CANCEL_FILE, CHECKPOINT_FILE, JobDir, is_job_dir, write_atomic
from ..records import Status
from . import files
from .supervise import RecordedJob, alive_ids, launch
from .wire import BACKOFF_MAX_S, Gone, Unreachable

LOGS_DIR = "logs"  # where a dispatched fit's Slurm log goes among its results (from the control directory)
SKIP = {"model", "tmp", LOGS_DIR, CHECKPOINT_FILE}  # not sent as results (the checkpoint goes on its own)
CHUNK = 1 << 20  # files are read, hashed and sent in blocks of this size
LOOK_S = 5.0  # how often a running job is looked at (its end is reported at once; heartbeats are rarer)

if TYPE_CHECKING:  # the worker that runs the attempts (it imports this module)
    from .worker import Worker


class Attempt(threading.Thread):
    """One claimed fit on this worker: submit it, keep its lease, send its files, report its end.

    The worker lets go of a fit a third of a lease before the controller would (two heartbeats
    missed, counted from when the last accepted one was sent), so that its job has stopped before the
    fit can be handed to another worker."""

    def __init__(self, worker: Worker, record: dict[str, Any]):
        super().__init__(name=f"fit-{record['fit']}", daemon=True)
        self.worker, self.record = worker, record
        self.fit_id, self.lease, self.number = record["fit"], record["lease"], record["attempt"]
        self.api = worker.controller
        self.base = worker.state_dir / "fits" / f"{self.fit_id}-{self.number}"
        self.last_ok = time.monotonic()  # when the last accepted heartbeat was sent
        self.superseded = threading.Event()  # a newer attempt of this fit runs here: stop this one
        self.sent_checkpoint: str | None = None  # the last checkpoint sent: inode, size and time
        self.last_record: Status | None = None  # what the last heartbeat said of the job

    @property
    def path(self) -> str:
        return f"/api/v1/dispatch/fits/{self.fit_id}"

    @property
    def lease_s(self) -> float:
        return float(self.record.get("expires_in", 180))

    def own_deadline_passed(self) -> bool:
        return time.monotonic() - self.last_ok > self.lease_s * 2 / 3

    def save(self) -> None:
        write_atomic(self.worker.state_dir / "inflight" / f"{self.fit_id}.json", json.dumps(self.record))

    def forget(self) -> None:
        """Drop this attempt's record, if it is still this attempt's (the fit may have come back)."""
        path = self.worker.state_dir / "inflight" / f"{self.fit_id}.json"
        try:
            if json.loads(path.read_text()).get("lease") == self.lease:
                path.unlink()
        except (OSError, ValueError):
            pass

    def lease_query(self) -> str:
        return "?lease=" + urllib.parse.quote(self.lease)

    def run(self) -> None:
        try:
            job = self._job()
            if job is None:
                return
            self._follow(job)
        except Gone as exc:
            self.worker.say(f"fit {self.fit_id}: its lease is gone ({exc}); letting it go")
            self._cancel()
            self.forget()
        except Exception as exc:  # a bug or the disk: never leave a job running that no one follows
            self.worker.say(f"fit {self.fit_id}: {type(exc).__name__}: {exc}; cancelling its job")
            self._cancel()
            self.forget()  # its lease expires and the fit goes back to the queue

    # --- starting -------------------------------------------------------------------------------------------

    def _job(self) -> JobDir | None:
        """The fit's job here: found again after a restart, or submitted now."""
        path = self.record.get("job_dir")
        if path and is_job_dir(path):
            if not self.worker.local and not self.record.get("slurm_id"):
                found = self._retrying(lambda: _find(Path(path)))  # Slurm's word, never job.json's
                if found:
                    self.record["slurm_id"] = found
                    self.save()
            if self.record.get("slurm_id") or self.record.get("supervisor"):
                job = self._recorded(path)
                self._retrying(lambda: self._heartbeat(job))  # Gone: a newer attempt owns the fit
                return job
        model_dir = self._retrying(self._fetch)
        backoff = 1.0
        while True:
            try:
                return self._submit(model_dir)
            except (
                ModelCheckError,
                UsageError,
            ) as exc:  # the model or the request: the fit fails, saying why
                failed = f"on worker {self.worker.name}: {exc}"
                self._retrying(lambda failed=failed: self._complete(None, JobState.FAILED.value, failed))
                return None
            except slurm.SubmitUncertain as exc:  # it may be queued: look for it, never submit it twice
                self.worker.say(f"fit {self.fit_id}: {exc}; looking for it in Slurm")
                found = self._retrying(lambda: _find(self.base / "job"))
                if found:
                    self.record["slurm_id"] = found
                    self.save()
                    return self._recorded(self.base / "job")
                shutil.rmtree(self.base / "job", ignore_errors=True)
            except BumpsMpiError as exc:  # the cluster, for now (slurmctld restarting): keep the lease, retry
                self.worker.say(f"fit {self.fit_id}: not submitted ({exc}); trying again in {backoff:.0f} s")
            self._retrying(lambda: self._heartbeat(None))
            time.sleep(backoff)
            backoff = min(2 * backoff, BACKOFF_MAX_S)

    def _recorded(self, path: Path | str) -> JobDir:
        """The job, with the Slurm id this worker recorded (the model can rewrite job.json)."""
        return RecordedJob(path, {"job_id": self.record.get("slurm_id")})

    def _fetch(self) -> Path:
        self._heartbeat(None)  # still ours? (a restart may have come after the lease)
        shutil.rmtree(self.base, ignore_errors=True)
        return self._download()

    def _retrying(self, call: Any) -> Any:
        """*call*, again after a pause while the controller (or Slurm) does not answer, within the lease."""
        backoff = 1.0
        while True:
            try:
                return call()
            except (Unreachable, slurm.Unreachable) as exc:
                if self.own_deadline_passed():
                    raise Gone(f"no answer for too long to keep the lease ({exc})") from None
                self.worker.say(f"fit {self.fit_id}: no answer ({exc}); trying again")
                time.sleep(backoff)
                backoff = min(2 * backoff, BACKOFF_MAX_S)

    def _download(self) -> Path:
        from .uploads import Budget, unzip

        self.base.mkdir(parents=True, exist_ok=True)
        _, bundle = self.api.call("GET", f"{self.path}/bundle{self.lease_query()}", timeout=300)
        archive = self.base / "bundle.zip"
        archive.write_bytes(bundle)
        model_dir = self.base / "model"
        model_dir.mkdir()
        unzip(archive, model_dir, Budget(1 << 40, 100_000, 1 << 40), 1 << 20)
        archive.unlink()
        if self.record.get("has_checkpoint"):
            _, data = self.api.call("GET", f"{self.path}/checkpoint{self.lease_query()}", timeout=300)
            (self.base / "start-from.h5").write_bytes(data)
        return model_dir

    def _submit(self, model_dir: Path) -> JobDir:
        from ..front import submission
        from .caches import user_cache

        asked = self.record["request"]
        resources: dict[str, Any] = {"sandbox": "require"}  # strangers' code: confined, or not at all
        key = self.record.get("cache_key")  # the fit's owner's own cache here; none from an older controller
        resources["sandbox_cache"] = str(user_cache(self.worker.state_dir, key)) if key else ""
        if not self.worker.local:
            resources.update({k: asked[k] for k in ("ntasks", "time") if asked.get(k)})
        elif asked.get("time"):  # a local run ends at its time limit too
            resources["time"] = asked["time"]
        start_from = self.base / "start-from.h5"
        request = submission.JobRequest(
            model=model_dir / asked["model"],
            model_args=list(asked.get("args", [])),
            fit=asked.get("fit", "dream"),
            fit_options=dict(asked.get("options", {})),
            seed=asked.get("seed"),
            name=f"fit-{self.fit_id}",
            job_dir=self.base / "job",
            profile=self.worker.profile,
            resources=resources,
            start_from=start_from if start_from.exists() else None,
        )
        self.record["job_dir"] = str(self.base / "job")
        self.save()  # before the job exists: a restart finds it (or finds it never started)
        if self.worker.local:
            job, ranks = submission.create_local(request, int(asked.get("ntasks") or 2))
            self.record["supervisor"] = launch(job, ranks)
            where = "here"
        else:
            done = submission.submit(request)
            where = f"as Slurm job {done['job_id']}"
            self.record["slurm_id"] = done["job_id"]
        self.save()  # who runs it, in the worker's own records (the job directory is the model's)
        resumed = " from the last checkpoint" if request.start_from else ""
        self.worker.say(f"fit {self.fit_id}: attempt {self.number} started {where}{resumed}")
        return self._recorded(self.base / "job")

    # --- following ---------------------------------------------------------------------------------

    def _status(self, job: JobDir) -> Status:
        """The job's status; its end only once the worker's own records say its processes are gone."""
        record = jobstate.status([job])[0]
        mine = {"id": self.fit_id, "job_id": self.record.get("slurm_id"),
                "supervisor": json.dumps(self.record.get("supervisor"))}  # fmt: skip
        if jobstate.ended_for_good(record) and alive_ids([mine]):  # its processes still run: not ended yet
            record = {**record, "state": JobState.RUNNING.value, "finishing": True, "reason": "finishing"}
        return record

    def _follow(self, job: JobDir) -> None:
        """Look at the job every few seconds (its end is sent at once); heartbeat every third of a lease."""
        period = max(1.0, self.lease_s / 3)
        look = min(LOOK_S, period)
        backoff, beaten = 1.0, 0.0
        while True:
            if self.superseded.is_set():
                self.worker.say(
                    f"fit {self.fit_id}: attempt {self.number} superseded by a newer one; stopping it"
                )
                self._cancel(job)
                self.forget()
                return
            record = self._status(job)
            ended = jobstate.ended_for_good(record)
            shown = (
                {**record, "state": JobState.RUNNING.value, "reason": "sending its results"}
                if ended
                else record
            )
            try:
                if (
                    ended or time.monotonic() - beaten >= period
                ):  # its end is told by complete, after the files
                    answer = self._heartbeat(job, shown)
                    beaten, backoff = time.monotonic(), 1.0
                    if answer.get("cancel") and not JobState(record["state"]).terminal:
                        self._cancel(job)
                    self._send_checkpoint(job)
                if ended:
                    skipped = self._send_results(job, shown)
                    kept = f"not kept: {'; '.join(skipped)}" if skipped else None
                    message = "; ".join(m for m in (record.get("reason"), kept) if m) or None
                    if skipped:
                        self.worker.say(f"fit {self.fit_id}: {kept}")
                    self._complete(job, record["state"], message)
                    return
            except Unreachable as exc:
                if self.own_deadline_passed():
                    self.worker.say(f"fit {self.fit_id}: cut off from the controller for too long to keep "
                                    "its lease: cancelling its job")  # fmt: skip
                    self._cancel(job)
                    self.forget()
                    return
                self.worker.say(f"fit {self.fit_id}: no answer ({exc}); trying again")
                time.sleep(min(backoff, period))
                backoff = min(2 * backoff, BACKOFF_MAX_S)
                continue
            time.sleep(look)

    def _heartbeat(self, job: JobDir | None, record: Status | None = None) -> dict[str, Any]:
        report: dict[str, Any] = {"lease": self.lease, "worker": self.worker.name}
        if record is not None:
            report.update({k: record.get(k) for k in ("state", "reason", "progress", "job_id")})
        else:
            report["state"] = "PENDING"
        self.last_record = record
        sent = time.monotonic()
        answer = self.api.json("POST", f"{self.path}/heartbeat", report, timeout=30)
        self.last_ok = sent  # the controller renewed the lease no earlier than this
        self.record["expires_in"] = answer["expires_in"]
        return answer

    def _send_checkpoint(self, job: JobDir) -> None:
        """The newest checkpoint, once: an unchanged one (same file, size and time) is not read again."""
        try:  # the job directory is the model's to write: read it through no link (bumps_mpi.service.files)
            handle = files.open_beneath(job.path, CHECKPOINT_FILE)
        except OSError:
            return
        with handle:
            info = os.fstat(handle.fileno())
            seen = f"{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"
            if seen == self.sent_checkpoint:
                return
            if info.st_size > files.RESULTS_LIMIT:
                self.worker.say(
                    f"fit {self.fit_id}: checkpoint of {info.st_size >> 20} MB not sent (too large)"
                )
                self.sent_checkpoint = seen
                return
            try:
                self._upload(f"{self.path}/checkpoint{self.lease_query()}", handle, None, None)
            except (Unreachable, Gone):
                raise
            except BumpsMpiError as exc:  # a checkpoint helps a next attempt; the fit goes on without it
                self.worker.say(f"fit {self.fit_id}: checkpoint not kept by the controller ({exc})")
        self.sent_checkpoint = seen

    def _upload(self, path: str, handle: Any, job: JobDir | None, record: Status | None) -> None:
        """Send one open file in blocks with its SHA-256 (hashed in blocks first), heartbeating throughout
        (hashing included) so that an upload longer than the lease never loses it."""
        done = threading.Event()

        def beat() -> None:
            period = max(1.0, self.lease_s / 3)
            while not done.wait(period):
                try:
                    self._heartbeat(job, record if record is not None else self.last_record)
                except Exception as exc:  # noqa: BLE001 - Gone, Unreachable: the upload itself says so
                    self.worker.say(f"fit {self.fit_id}: heartbeat during an upload: {exc}")

        beating = threading.Thread(target=beat, name=f"heartbeat {self.fit_id}", daemon=True)
        beating.start()
        try:
            digest, size = _digest(handle)
            headers = {"X-Content-SHA256": digest, "Content-Length": str(size)}
            self.api.call("PUT", path, raw=handle, timeout=300, headers=headers)
        finally:
            done.set()
            beating.join()

    def _send_results(self, job: JobDir, record: Status) -> list[str]:
        """Send the job's files, smallest first, in blocks, the lease kept alive throughout; what was not
        sent, and why (a file refused, or past the per-fit total), for the fit's record."""
        sizes, where = {}, {}  # the name each file is sent as: its size, and (directory, its name there)
        for relative in files.regular_files(job.path):
            parts = relative.split("/")
            if parts[0] in SKIP or any(part.startswith(".") for part in parts):  # temporaries, mid-write
                continue
            where[relative] = (job.path, relative)
        for name in files.regular_files(job.control):  # the Slurm log: in the control directory
            if name.startswith("slurm-") and name.endswith(".out"):
                where[f"{LOGS_DIR}/{name}"] = (job.control, name)
        for sent, (base, relative) in where.items():
            try:
                sizes[sent] = (base / relative).lstat().st_size
            except OSError:
                continue
        skipped, total = [], 0
        sending: Status = {**record, "state": JobState.RUNNING.value, "reason": "sending its results"}
        for relative in sorted(sizes, key=lambda r: (sizes[r], r)):  # the result and report before the chain
            if total + sizes[relative] > files.RESULTS_LIMIT:
                skipped.append(f"{relative} (past the {files.RESULTS_LIMIT >> 20} MB a fit may keep)")
                continue
            try:
                handle = files.open_beneath(*where[relative])
            except OSError:
                continue  # replaced by a link or gone since the listing: not the fit's result
            with handle:
                try:
                    target = f"{self.path}/files/{urllib.parse.quote(relative)}{self.lease_query()}"
                    self._upload(target, handle, job, sending)
                    total += os.fstat(handle.fileno()).st_size
                except (Unreachable, Gone):
                    raise
                except BumpsMpiError as exc:  # refused for good (too large, a bad name): said, not fatal
                    skipped.append(f"{relative} ({exc})")
        return skipped

    def _complete(self, job: JobDir | None, state: str, message: str | None) -> None:
        self.api.json(
            "POST", f"{self.path}/complete", {"lease": self.lease, "state": state, "message": message}
        )
        self.worker.say(f"fit {self.fit_id}: attempt {self.number} ended {state}")
        self.forget()

    def _cancel(self, job: JobDir | None = None) -> None:
        """Stop this attempt's job, by what the worker recorded (its Slurm id, its supervisor)."""
        path = self.record.get("job_dir")
        if path and is_job_dir(path):
            write_atomic(JobDir(path).file(CANCEL_FILE), f"{time.time()}\n")  # no requeue after this
        if self.record.get("slurm_id"):
            try:
                slurm.scancel(str(self.record["slurm_id"]))
            except BumpsMpiError:
                pass  # it has ended already
        elif processes.alive(self.record.get("supervisor")):
            os.kill(int(self.record["supervisor"]["pid"]), signal.SIGTERM)


def _digest(handle: Any) -> tuple[str, int]:
    """(SHA-256, size) of an open file read in blocks from its start; left at its start again."""
    hasher, size = hashlib.sha256(), 0
    handle.seek(0)
    while block := handle.read(CHUNK):
        hasher.update(block)
        size += len(block)
    handle.seek(0)
    return hasher.hexdigest(), size


def _find(job_dir: Path) -> str | None:
    """Slurm's id of the job running in *job_dir* (squeue); slurm.Unreachable when Slurm cannot say."""
    return slurm.find_by_workdir(job_dir)
