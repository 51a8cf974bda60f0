"""CliAdapter: the SlurmAdapter contract over Slurm's command-line clients (see the package docstring)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from slurm_adapters.cli.cluster import boot_time, partitions_from_key_values, sdiag_facts
from slurm_adapters.cli.errors import classify, error_lines, slurm_messages
from slurm_adapters.cli.jobs import CliJob, from_key_values, jobs_from_json, json_errors
from slurm_adapters.cli.render import export_file, parse_submit, submit_argv, tool_path_in
from slurm_adapters.cli.runner import TOOL_PATH, Outcome, Runner
from slurm_adapters.convert import parse_key_values
from slurm_adapters.environment import batch_environment
from slurm_adapters.errors import (
    AccountingUnavailable,
    ClusterUnavailable,
    JobNotFound,
    OutputUnavailable,
    SiteError,
    SlurmError,
)
from slurm_adapters.fencing import check_cancel_target, check_submit_window
from slurm_adapters.formats import DATA_PARSER_RELEASE, RecordFormat, for_release
from slurm_adapters.interface import SlurmAdapter
from slurm_adapters.records import (
    MAX_OUTPUT_CHUNK_BYTES,
    ClusterInfo,
    Health,
    JobRecord,
    OutputChunk,
    OutputStream,
    Rendering,
    SlurmJobSpec,
    SubmitContext,
)
from slurm_adapters.safety import (
    SitePolicy,
    check_chunk_request,
    check_spec,
    fenced_script,
    read_owned_chunk,
    read_owned_tail,
    site_path,
)

log = logging.getLogger(__name__)
_R = TypeVar("_R")
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")
# scontrol's --json came with the data_parser plugin (23.02), and squeue honours its filters from then on
# (measured: 24.11, 26.05).
JSON_RELEASE = DATA_PARSER_RELEASE
# scancel's answers for a job that ended (or was purged) between our look-up and the cancel.
_ALREADY_DONE = ("already completing or completed", "Invalid job id specified")


def parse_release(output: str) -> tuple[int, int, int] | None:
    """``slurm-wlm 22.05.8`` (Debian) or ``slurm 24.11.5`` -> (22, 5, 8)."""
    match = _VERSION.search(output)
    if not match:
        return None
    major, minor, micro = (int(part) for part in match.groups())
    return major, minor, micro


def release_text(release: tuple[int, int, int]) -> str:
    """(22, 5, 8) -> ``22.05.8``, as Slurm writes it."""
    major, minor, micro = release
    return f"{major}.{minor:02d}.{micro}"


class CliAdapter(SlurmAdapter):
    """One cluster through sbatch/squeue/scontrol/scancel/sinfo.

    ``slurm_conf`` is the path inside the cluster's filesystem; ``exec_prefix`` runs a command there
    (``[]`` on a login node, ``[enter-root, DIR]`` in the lab). ``operator_user`` is who reads jobs and
    cluster state (None: the adapter's own identity; with PrivateData it must be root or SlurmUser).
    ``fs_root`` is the host path of the cluster's "/" for reading output files (None: unreadable).
    ``as_root`` (default: whether this process is root) runs user commands through ``runuser``; without
    it every command runs as the adapter's identity.
    """

    kind = "cli"

    def __init__(
        self,
        cluster: str,
        *,
        slurm_conf: str,
        exec_prefix: Sequence[str] = (),
        policy: SitePolicy | None = None,
        operator_user: str | None = None,
        fs_root: str | Path | None = None,
        as_root: bool | None = None,
        timeout_s: float = 8.0,
        tool_path: str = TOOL_PATH,
    ) -> None:
        super().__init__(cluster)
        self.policy = policy or SitePolicy()
        self.operator_user = operator_user
        self.fs_root = Path(fs_root) if fs_root is not None else None
        self.runner = Runner(
            cluster=cluster,
            slurm_conf=slurm_conf,
            exec_prefix=tuple(exec_prefix),
            as_root=os.geteuid() == 0 if as_root is None else as_root,
            timeout_s=timeout_s,
            tool_path=tool_path,
        )
        # Without a chain, this host's "/" is the cluster's; behind one (ssh) sbatch is looked up there.
        root = self.fs_root if self.fs_root is not None or exec_prefix else Path("/")
        self.sbatch = tool_path_in(root, "sbatch", tool_path)
        self._release: tuple[int, int, int] | None = None
        self._release_lock = asyncio.Lock()

    # -- release ------------------------------------------------------------------------------------

    async def release(self) -> tuple[int, int, int]:
        """The cluster's Slurm release, read once (sbatch reads slurm.conf, no controller involved)."""
        async with self._release_lock:
            if self._release is None:
                outcome = await self.runner.run(["sbatch", "--version"])
                release = parse_release(outcome.stdout) if outcome.returncode == 0 else None
                if release is None:
                    raise classify(outcome.stderr or outcome.stdout, cluster=self.cluster, tool="sbatch")
                self._release = release
            return self._release

    async def _json_era(self) -> bool:
        return (await self.release())[:2] >= JSON_RELEASE

    async def _records(self) -> RecordFormat:
        """The format of this release's ``--json`` output."""
        return for_release(await self.release())

    # -- submit -------------------------------------------------------------------------------------

    def render(self, spec: SlurmJobSpec, user: str) -> Rendering:
        self.policy.check_user(user, cluster=self.cluster)
        check_spec(spec, cluster=self.cluster)
        return Rendering(
            adapter=self.kind,
            user=user,
            script=fenced_script(spec.script),
            payload={
                "argv": self.runner.argv(self._submit_argv(spec), user),
                "env": self.runner.environment(),
                # 22.05's sbatch leaves SLURM_JOB_NAME out when it reads an export file (measured).
                "export": batch_environment(spec, self.policy.login(user), sbatch={"SLURM_JOB_NAME": spec.name}),
            },
        )

    def _submit_argv(self, spec: SlurmJobSpec) -> list[str]:
        return submit_argv(spec, self.runner.slurm_conf, self.sbatch)

    async def submit(self, spec: SlurmJobSpec, user: str, context: SubmitContext | None = None) -> int:
        rendering = self.render(spec, user)
        argv = self._submit_argv(spec)
        check_submit_window(context, self.runner.timeout_s, cluster=self.cluster)  # the last thing before sbatch
        outcome = await self.runner.run(
            argv,
            user=user,
            stdin=rendering.script.encode(),
            export_file=export_file(rendering.payload["export"]),
            maybe_applied=True,
        )
        if outcome.returncode != 0:
            raise classify(
                outcome.stderr,
                cluster=self.cluster,
                tool="sbatch",
                maybe_applied=True,
                job_error_default=True,
            )
        if warnings := [line.strip() for line in outcome.stderr.splitlines() if line.strip()]:
            # e.g. "can't run 1 processes on 4 nodes, setting nnodes to 1": Slurm changed the request
            log.warning("sbatch on %s accepted the job with remarks: %s", self.cluster, " | ".join(warnings))
        job_id = parse_submit(outcome.stdout)
        if job_id is None:  # sbatch said yes but no id we can read: the job may well exist
            raise ClusterUnavailable(
                f"sbatch succeeded without a job id: {outcome.stdout.strip()!r}",
                cluster=self.cluster,
                errors=slurm_messages(outcome.stderr),
                maybe_applied=True,
            )
        return job_id

    # -- reading jobs -------------------------------------------------------------------------------

    async def _operator(self, command: Sequence[str]) -> Outcome:
        """Run a read command as the operator. Any error line fails it, whatever the exit code: with a
        broken munge, 24.11's ``scontrol show job ID --json`` exits 0 with an empty, error-free answer
        that would otherwise read as "no such job"."""
        outcome = await self.runner.run(command, user=self.operator_user)
        if outcome.returncode != 0 or error_lines(outcome.stderr):
            raise classify(outcome.stderr or outcome.stdout, cluster=self.cluster, tool=command[0])
        return outcome

    async def _operator_json(self, command: Sequence[str], *, harmless: str | None = None) -> dict[str, Any]:
        """``command``'s JSON answer; an entry of its ``errors`` that contains ``harmless`` is not a failure
        (sacct reports an empty result as the error "Nothing found")."""
        outcome = await self._operator(command)
        try:
            body = json.loads(outcome.stdout)
        except json.JSONDecodeError as exc:
            raise SiteError(f"{command[0]} printed no valid JSON: {exc}", cluster=self.cluster) from exc
        if not isinstance(body, dict):
            raise SiteError(f"{command[0]} printed JSON that is not an object", cluster=self.cluster)
        errors = [error for error in json_errors(body) if harmless is None or harmless not in error]
        if errors:  # 22.05's squeue --json reports failures here, exit code 0
            raise classify("\n".join(f"error: {error}" for error in errors), cluster=self.cluster, tool=command[0])
        return body

    async def _job(self, job_id: int) -> CliJob:
        job_id = int(job_id)
        if await self._json_era():
            body = await self._operator_json(["scontrol", "show", "job", str(job_id), "--json"])
            jobs = [job for job in jobs_from_json(body, await self._records()) if job.record.job_id == job_id]
        else:
            outcome = await self._operator(["scontrol", "show", "job", "-o", str(job_id)])
            lines = (parse_key_values(line.strip()) for line in outcome.stdout.splitlines())
            jobs = [from_key_values(kv) for kv in lines if kv.get("JobId") == str(job_id)]
        if not jobs:  # 24.11+ answers an unknown id with an empty list and exit code 0
            raise JobNotFound(f"job {job_id} is not known to slurmctld", cluster=self.cluster)
        return jobs[0]

    async def get_job(self, job_id: int) -> JobRecord:
        return (await self._job(job_id)).record

    async def list_jobs(self, *, tags: Collection[str] | None = None, tag_prefix: str | None = None) -> list[JobRecord]:
        # 22.05 ignores squeue's filters in JSON mode and lists everything in memory anyway.
        command = ["squeue", "--json", "--all", "--states=all"] if await self._json_era() else ["squeue", "--json"]
        records = [job.record for job in jobs_from_json(await self._operator_json(command), await self._records())]
        wanted = set(tags) if tags is not None else None
        return [
            record
            for record in records
            if (wanted is None or record.tag in wanted)
            and (tag_prefix is None or (record.tag or "").startswith(tag_prefix))
        ]

    # -- cancel -------------------------------------------------------------------------------------

    async def cancel(self, job_id: int, user: str, tag: str | None = None) -> None:
        """scancel exits 0 for unknown and finished jobs, so the job is looked up first; that same read
        checks the ``tag`` and the user, where a tag is given."""
        self.policy.check_user(user, cluster=self.cluster)
        record = await self.get_job(job_id)  # JobNotFound for an unknown id
        if tag is not None:
            check_cancel_target(record, user=user, tag=tag, cluster=self.cluster)
        if record.state.is_terminal:
            return
        outcome = await self.runner.run(["scancel", str(int(job_id))], user=user, maybe_applied=True)
        if outcome.returncode == 0:
            return
        messages = slurm_messages(outcome.stderr)
        if any(done.lower() in message.lower() for message in messages for done in _ALREADY_DONE):
            return  # it ended (and maybe was purged) since the look-up
        raise classify(outcome.stderr, cluster=self.cluster, tool="scancel", maybe_applied=True)

    # -- output -------------------------------------------------------------------------------------

    async def read_output(self, job_id: int, stream: OutputStream = "stdout", max_bytes: int = 65536) -> str:
        host_path, uid, where = await self._output_file(job_id, stream)
        return await self._read_file(where, lambda: read_owned_tail(host_path, max_bytes, owner_uid=uid))

    async def read_output_chunk(
        self, job_id: int, stream: OutputStream = "stdout", offset: int = 0, max_bytes: int = MAX_OUTPUT_CHUNK_BYTES
    ) -> OutputChunk:
        max_bytes = check_chunk_request(offset, max_bytes, cluster=self.cluster)
        host_path, uid, where = await self._output_file(job_id, stream)
        return await self._read_file(where, lambda: read_owned_chunk(host_path, offset, max_bytes, owner_uid=uid))

    async def _output_file(self, job_id: int, stream: OutputStream) -> tuple[Path, int, str]:
        """Where the job's stream is, from slurmctld's record of the job (never the caller's word), its owner's
        uid, and how to name it in messages."""
        if self.fs_root is None:
            raise OutputUnavailable("output files are not reachable from this adapter", cluster=self.cluster)
        job = await self._job(job_id)
        path = job.record.stdout if stream == "stdout" else job.record.stderr
        if path is None or not path.startswith("/"):
            raise OutputUnavailable(f"job {job_id} has no {stream} file", cluster=self.cluster)
        if job.uid is None:
            raise OutputUnavailable(f"job {job_id}'s owner is unknown", cluster=self.cluster)
        return site_path(self.fs_root, path), job.uid, f"job {job_id}'s {stream} {path}"

    async def _read_file(self, where: str, read: Callable[[], _R]) -> _R:
        """``read`` in a thread, within the runner's deadline; OS errors become :class:`OutputUnavailable`."""
        try:
            async with asyncio.timeout(self.runner.timeout_s):
                return await asyncio.to_thread(read)
        except FileNotFoundError as exc:
            raise OutputUnavailable(f"{where} does not exist (yet)", cluster=self.cluster) from exc
        except OSError as exc:
            raise OutputUnavailable(f"cannot read {where}: {exc}", cluster=self.cluster) from exc
        except TimeoutError:
            raise ClusterUnavailable(
                f"reading {where} took longer than {self.runner.timeout_s:g} s", cluster=self.cluster
            ) from None

    # -- cluster ------------------------------------------------------------------------------------

    async def cluster_info(self) -> ClusterInfo:
        release = await self.release()
        node_command = ["scontrol", "show", "node", "--json"] if release[:2] >= JSON_RELEASE else ["sinfo", "--json"]
        nodes_body, partitions = await asyncio.gather(
            self._operator_json(node_command), self._operator(["scontrol", "show", "partition", "-o"])
        )
        nodes = for_release(release).parse_nodes(nodes_body)
        return ClusterInfo(
            cluster=self.cluster,
            release=release_text(release),
            partitions=tuple(partitions_from_key_values(partitions.stdout, nodes)),
            nodes=tuple(nodes),
        )

    async def health(self) -> Health:
        """A cheap RPC that slurmctld must authenticate (munge) and answer; ping alone proves neither."""
        release = await self.release()
        outcome = await self._operator(["scontrol", "show", "partition", "-o"])
        count = sum(1 for line in outcome.stdout.splitlines() if line.startswith("PartitionName="))
        statistics_since, backlog = sdiag_facts((await self._operator(["sdiag"])).stdout)
        started = boot_time((await self._operator(["scontrol", "show", "config"])).stdout)
        who = self.operator_user or "the adapter's identity"
        return Health(
            ok=True,
            detail=f"slurmctld answered scontrol as {who} ({count} partitions)",
            release=release_text(release),
            up_since=started or statistics_since,
            accounting_backlog=backlog,
        )

    async def accounted_jobs(
        self, *, job_ids: Collection[int] = (), submitted_after: datetime | None = None
    ) -> list[JobRecord]:
        """``sacct --json`` as the operator (measured on 22.05; its JSON is slurmdbd's job record)."""
        if job_ids:
            selection = ["--jobs", ",".join(str(int(job_id)) for job_id in dict.fromkeys(job_ids))]
        elif submitted_after is not None:
            # -S selects jobs active since then, in the cluster's local time: a day earlier covers any
            # time zone, and the exact bound is applied here, on Slurm's own submit times.
            window = (submitted_after - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
            selection = ["--starttime", window, "--endtime", "now"]
        else:
            raise ValueError("give job_ids or submitted_after")
        try:
            body = await self._operator_json(["sacct", "--json", "--allusers", *selection], harmless="Nothing found")
        except SlurmError as exc:  # "Slurm accounting storage is disabled", slurmdbd down, ...
            raise AccountingUnavailable(
                f"sacct failed: {exc.message}", cluster=self.cluster, errors=exc.errors
            ) from exc
        records = (await self._records()).parse_accounted_jobs(body)
        if submitted_after is not None and not job_ids:
            records = [r for r in records if r.submit_time is not None and r.submit_time >= submitted_after]
        return records
