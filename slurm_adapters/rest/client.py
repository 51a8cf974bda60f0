"""The slurmrestd adapter: one cluster reached over its REST API with locally minted JWTs.

Every request carries a fresh short-lived token: the mapped user's for submit and cancel (so Slurm itself
enforces who may do what), the operator's for reads and health. The API version is negotiated once, newest
first, with an authenticated ping; everything version-specific lives in the codecs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx

from slurm_adapters.environment import batch_environment, sbatch_variables
from slurm_adapters.errors import (
    AccountingUnavailable,
    AuthenticationError,
    ClusterUnavailable,
    JobNotFound,
    OutputUnavailable,
    SlurmError,
)
from slurm_adapters.fencing import check_cancel_target, check_submit_window
from slurm_adapters.formats.common import (
    Json,
    controller_uptime_facts,
    default_partition_names,
    errors_of,
    number,
)
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
from slurm_adapters.rest.codec import Codec
from slurm_adapters.rest.errors import Operation, classify
from slurm_adapters.rest.v0038 import V0038
from slurm_adapters.rest.v0042 import V0042
from slurm_adapters.safety import (
    SitePolicy,
    check_chunk_request,
    check_spec,
    fenced_script,
    read_owned_chunk,
    read_owned_tail,
    site_path,
)
from slurm_adapters.tokens import DEFAULT_LIFETIME_S, TokenError, TokenMinter

_R = TypeVar("_R")

# Newest first: the order version negotiation tries them in.
CODECS: tuple[Codec, ...] = (V0042(), V0038())
CODECS_BY_VERSION: Mapping[str, Codec] = {codec.version: codec for codec in CODECS}
NOTHING_FOUND = 9003  # slurmdbd's "Nothing found with query": an empty answer, not a failure
# Connections to slurmrestd, every one kept alive between bursts. slurmctld takes its job write lock for each
# submit, so more connections only move the queue from here into slurmrestd, while httpcore looks at every
# pooled connection for each request; calls beyond these wait for a free one within their own deadline.
CONNECTIONS = 10


class RestAdapter(SlurmAdapter):
    """A Slurm cluster behind slurmrestd (22.05 via v0.0.38, 24.11 and 26.05 via v0.0.42)."""

    kind = "rest"

    def __init__(
        self,
        cluster: str,
        base_url: str,
        jwt_key_file: str | Path,
        operator_user: str,
        policy: SitePolicy,
        *,
        output_root: str | Path | None = None,
        timeout_s: float = 8.0,
        list_timeout_s: float = 60.0,
        connect_timeout_s: float = 3.0,
        token_lifetime_s: int = DEFAULT_LIFETIME_S,
        api_version: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``output_root`` is the host path of the cluster's "/" (None: outputs are not readable here).

        ``timeout_s`` bounds every call but the job listing (``list_timeout_s``): it stays below Slurm's
        default MessageTimeout (10 s), for which slurmrestd keeps retrying a dead slurmctld before it
        answers, so an unreachable cluster shows as such in seconds. For a submit it is the whole request's
        deadline (httpx's timeouts bound each phase only), which the submit fence relies on.
        ``api_version`` pins a version and skips negotiation; ``transport`` is for tests.
        """
        super().__init__(cluster)
        if api_version is not None and api_version not in CODECS_BY_VERSION:
            raise ValueError(f"unsupported slurmrestd API version {api_version!r}")
        self.base_url = base_url.rstrip("/")
        self.operator_user = operator_user
        self.policy = policy
        self.timeout_s = timeout_s
        self.output_root = None if output_root is None else Path(output_root)
        self._tokens = TokenMinter(jwt_key_file, lifetime_s=token_lifetime_s)
        self._codec: Codec | None = CODECS_BY_VERSION[api_version] if api_version else None
        self._negotiation = asyncio.Lock()
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._list_timeout = httpx.Timeout(list_timeout_s, connect=connect_timeout_s)
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=self._timeout,
            headers={"Accept": "application/json"},
            limits=httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS),
            transport=transport,
        )

    @property
    def api_version(self) -> str | None:
        """The negotiated (or pinned) API version; None before the first call."""
        return None if self._codec is None else self._codec.version

    # -- transport ---------------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        user: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        time_budget: httpx.Timeout | None = None,
    ) -> tuple[int, Json, float]:
        """One request with a fresh token; (HTTP status, JSON body or {}, seconds taken)."""
        try:
            token = self._tokens.mint(user)
        except (OSError, TokenError) as exc:
            raise AuthenticationError(f"cannot mint a Slurm token: {exc}", cluster=self.cluster) from exc
        headers = {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token}
        started = time.monotonic()
        try:
            response = await self._client.request(
                method, path, params=params, json=body, headers=headers, timeout=time_budget or self._timeout
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ClusterUnavailable(
                f"cannot connect to slurmrestd at {self.base_url}: {type(exc).__name__} {exc}",
                cluster=self.cluster,
            ) from exc
        except httpx.TransportError as exc:  # timeouts and drops once the request may have been sent
            raise ClusterUnavailable(
                f"slurmrestd at {self.base_url} failed mid-request: {type(exc).__name__} {exc}",
                cluster=self.cluster,
                maybe_applied=True,
            ) from exc
        elapsed = time.monotonic() - started
        try:
            payload = response.json()
        except ValueError:  # 404 pages and proxies answer text
            payload = {}
        return response.status_code, payload if isinstance(payload, dict) else {}, elapsed

    async def _call(
        self,
        method: str,
        path: str,
        *,
        operation: Operation,
        user: str | None = None,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        time_budget: httpx.Timeout | None = None,
    ) -> Json:
        """Send, then raise the typed error Slurm's answer amounts to (whatever the HTTP status)."""
        status, payload, elapsed = await self._send(
            method, path, user=user or self.operator_user, params=params, body=body, time_budget=time_budget
        )
        error = self._error_in(operation, status, payload, elapsed)
        if error is not None:
            raise error
        return payload

    def _error_in(self, operation: Operation, status: int, payload: Json, elapsed: float) -> SlurmError | None:
        """The typed error an answer amounts to, or None: Slurm's ``errors`` (and a cancel's per-job
        failures) decide, the HTTP status only where they say nothing."""
        messages = errors_of(payload)
        if operation == "cancel" and self._codec is not None:
            messages += self._codec.signal_errors(payload)
        return classify(cluster=self.cluster, operation=operation, status=status, messages=messages, elapsed_s=elapsed)

    async def _negotiated(self) -> Codec:
        if self._codec is not None:
            return self._codec
        async with self._negotiation:
            if self._codec is None:
                self._codec = await self._negotiate()
        return self._codec

    async def _negotiate(self) -> Codec:
        """The newest supported version the daemon serves: an authenticated ping, 404 = not served.

        A version that answers is remembered even when the answer is an error (a rejected token, a dead
        slurmctld): it is served, and the error is raised for the caller as it is.
        """
        for codec in CODECS:
            try:
                status, payload, elapsed = await self._send("GET", codec.ping_path, user=self.operator_user)
            except ClusterUnavailable as exc:  # the caller's own request was never sent
                raise ClusterUnavailable(exc.message, cluster=self.cluster) from exc
            if status == 404:  # ping never 404s where it is served, whatever the body says
                continue
            self._codec = codec
            error = self._error_in("probe", status, payload, elapsed)
            if error is not None:
                raise error
            return codec
        served = ", ".join(codec.version for codec in CODECS)
        raise ClusterUnavailable(f"slurmrestd serves none of {served}", cluster=self.cluster)

    # -- the adapter contract ----------------------------------------------------------------------

    def _render(self, codec: Codec, spec: SlurmJobSpec, user: str) -> Rendering:
        self.policy.check_user(user, cluster=self.cluster)
        check_spec(spec, cluster=self.cluster)
        script = fenced_script(spec.script)
        release = codec.sbatch_release
        exported = sbatch_variables(spec, release=release, submit_host=socket.gethostname())
        environment = batch_environment(spec, self.policy.login(user), sbatch=exported, release=release)
        payload = codec.render_submit(spec, script, environment)
        return Rendering(adapter=self.kind, user=user, script=script, payload=payload)

    def render(self, spec: SlurmJobSpec, user: str) -> Rendering:
        """The JSON body for the negotiated version (the newest supported one before any call)."""
        return self._render(self._codec or CODECS[0], spec, user)

    async def submit(self, spec: SlurmJobSpec, user: str, context: SubmitContext | None = None) -> int:
        self.policy.check_user(user, cluster=self.cluster)  # refuse before anything reaches slurmrestd
        check_spec(spec, cluster=self.cluster)
        codec = await self._negotiated()
        rendering = self._render(codec, spec, user)
        check_submit_window(context, self.timeout_s, cluster=self.cluster)  # the last thing before the call
        try:
            async with asyncio.timeout(self.timeout_s):
                status, payload, elapsed = await self._send(
                    "POST", codec.submit_path, user=user, body=rendering.payload
                )
        except TimeoutError:
            raise ClusterUnavailable(
                f"slurmrestd at {self.base_url} did not answer the submit within {self.timeout_s:g} s",
                cluster=self.cluster,
                maybe_applied=True,
            ) from None
        job_id = codec.parse_submit(payload)
        if job_id is not None and status < 400:
            return job_id  # a job exists: never turn it into an error (the caller would resubmit)
        raise self._error_in("submit", status, payload, elapsed) or ClusterUnavailable(
            f"slurmrestd answered the submit (HTTP {status}) without a job id",
            cluster=self.cluster,
            maybe_applied=True,
        )

    async def get_job(self, job_id: int) -> JobRecord:
        return (await self._job_and_uid(job_id))[0]

    async def _job_and_uid(self, job_id: int) -> tuple[JobRecord, int | None]:
        """The job and its owner's uid, both from slurmctld's one answer."""
        codec = await self._negotiated()
        payload = await self._call("GET", codec.job_path(job_id), operation="get")
        for record in codec.records.parse_jobs(payload):
            if record.job_id == job_id:
                return record, _uid_of(payload, job_id)
        raise JobNotFound(f"job {job_id} is not in slurmctld's answer", cluster=self.cluster)

    async def list_jobs(self, *, tags: Collection[str] | None = None, tag_prefix: str | None = None) -> list[JobRecord]:
        codec = await self._negotiated()
        payload = await self._call(
            "GET", codec.jobs_path, operation="list", params=codec.jobs_params, time_budget=self._list_timeout
        )
        records = codec.records.parse_jobs(payload)
        if tags is not None:
            wanted = set(tags)
            records = [r for r in records if r.tag in wanted]
        if tag_prefix is not None:
            records = [r for r in records if r.tag is not None and r.tag.startswith(tag_prefix)]
        return records

    async def cancel(self, job_id: int, user: str, tag: str | None = None) -> None:
        """With a ``tag``: one read (the operator's view) to check tag and user, then the DELETE."""
        self.policy.check_user(user, cluster=self.cluster)
        codec = await self._negotiated()
        if tag is not None:
            check_cancel_target(await self.get_job(job_id), user=user, tag=tag, cluster=self.cluster)
        await self._call("DELETE", codec.job_path(job_id), operation="cancel", user=user)

    async def read_output(self, job_id: int, stream: OutputStream = "stdout", max_bytes: int = 65536) -> str:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        host_path, uid = await self._output_file(job_id, stream)
        return await self._read_file(host_path, lambda: read_owned_tail(host_path, max_bytes, owner_uid=uid))

    async def read_output_chunk(
        self, job_id: int, stream: OutputStream = "stdout", offset: int = 0, max_bytes: int = MAX_OUTPUT_CHUNK_BYTES
    ) -> OutputChunk:
        max_bytes = check_chunk_request(offset, max_bytes, cluster=self.cluster)
        host_path, uid = await self._output_file(job_id, stream)
        return await self._read_file(host_path, lambda: read_owned_chunk(host_path, offset, max_bytes, owner_uid=uid))

    async def _output_file(self, job_id: int, stream: OutputStream) -> tuple[Path, int]:
        """Where the job's stream is, from slurmctld's record of the job (never the caller's word), and its uid."""
        if self.output_root is None:
            raise OutputUnavailable(
                "this adapter has no view of the cluster's filesystem (no output_root)", cluster=self.cluster
            )
        record, uid = await self._job_and_uid(job_id)
        path = record.stdout if stream == "stdout" else record.stderr
        if not path:
            raise OutputUnavailable(f"job {job_id} has no {stream} file", cluster=self.cluster)
        if uid is None:
            raise OutputUnavailable(f"job {job_id}'s owner is unknown", cluster=self.cluster)
        return site_path(self.output_root, path), uid

    async def _read_file(self, host_path: Path, read: Callable[[], _R]) -> _R:
        """``read`` in a thread, within the adapter's call deadline; OS errors become :class:`OutputUnavailable`."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await asyncio.to_thread(read)
        except FileNotFoundError as exc:
            raise OutputUnavailable(f"{host_path} does not exist (yet)", cluster=self.cluster) from exc
        except OSError as exc:  # PermissionError for a file the job's user does not own
            raise OutputUnavailable(f"cannot read {host_path}: {exc}", cluster=self.cluster) from exc
        except TimeoutError:
            raise ClusterUnavailable(
                f"reading {host_path} took longer than {self.timeout_s:g} s", cluster=self.cluster
            ) from None

    async def cluster_info(self) -> ClusterInfo:
        codec = await self._negotiated()
        nodes_body = await self._call("GET", codec.nodes_path, operation="info")
        partitions_body = await self._call("GET", codec.partitions_path, operation="info")
        nodes = codec.records.parse_nodes(nodes_body)
        partitions = codec.records.parse_partitions(partitions_body, nodes)
        if codec.partition_flags_path and all(p.default is None for p in partitions):
            defaults = await self._default_partitions(codec.partition_flags_path)
            if defaults is not None:
                partitions = [dataclasses.replace(p, default=p.name in defaults) for p in partitions]
        return ClusterInfo(
            cluster=self.cluster,
            release=codec.records.release(partitions_body) or codec.records.release(nodes_body),
            partitions=tuple(partitions),
            nodes=tuple(nodes),
        )

    async def _default_partitions(self, path: str) -> set[str] | None:
        """Best effort: a newer data_parser on the same daemon may name the default partition (None: it cannot)."""
        status, payload, _ = await self._send("GET", path, user=self.operator_user)
        if status != 200 or errors_of(payload):
            return None
        return default_partition_names(payload)

    async def health(self) -> Health:
        """diag, not ping: 24.11's ping answers 200 even for a rejected token."""
        codec = await self._negotiated()
        payload = await self._call("GET", codec.diag_path, operation="health")
        up_since, backlog = controller_uptime_facts(payload)
        return Health(
            ok=True,
            detail=f"slurmctld answered diag via slurmrestd {codec.version}",
            release=codec.records.release(payload),
            up_since=up_since,
            accounting_backlog=backlog,
        )

    async def accounted_jobs(
        self, *, job_ids: Collection[int] = (), submitted_after: datetime | None = None
    ) -> list[JobRecord]:
        """slurmdbd's records through slurmrestd's ``/slurmdb`` routes (the operator's token)."""
        codec = await self._negotiated()
        if codec.accounting_prefix is None:
            raise AccountingUnavailable(
                f"slurmdbd lookups are not implemented for slurmrestd {codec.version}", cluster=self.cluster
            )
        if job_ids:
            records = []
            for job_id in dict.fromkeys(job_ids):  # 22.05 has no job-list filter: one call per id
                records += await self._accounting_get(f"{codec.accounting_prefix}/job/{int(job_id)}", {})
            return records
        if submitted_after is None:
            raise ValueError("give job_ids or submitted_after")
        # start_time selects jobs active since then, in slurmrestd's local time: a day earlier covers any
        # time zone, and the exact bound is applied here, on Slurm's own submit times.
        window = (submitted_after - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
        records = await self._accounting_get(f"{codec.accounting_prefix}/jobs", {"start_time": window})
        return [r for r in records if r.submit_time is not None and r.submit_time >= submitted_after]

    async def _accounting_get(self, path: str, params: Mapping[str, str]) -> list[JobRecord]:
        codec = await self._negotiated()
        try:
            status, payload, _ = await self._send(
                "GET", path, user=self.operator_user, params=params, time_budget=self._list_timeout
            )
        except ClusterUnavailable as exc:
            raise AccountingUnavailable(f"slurmdbd lookup failed: {exc.message}", cluster=self.cluster) from exc
        messages = errors_of(payload)
        failures = [m.text for m in messages if m.number != NOTHING_FOUND]
        if failures or (status >= 400 and not messages):
            served = " (not served here: no slurmdbd plugin loaded)" if status == 404 and not messages else ""
            raise AccountingUnavailable(
                f"slurmdbd lookup failed, HTTP {status}{served}", cluster=self.cluster, errors=failures
            )
        return codec.records.parse_accounted_jobs(payload)

    async def aclose(self) -> None:
        await self._client.aclose()


def _uid_of(payload: Json, job_id: int) -> int | None:
    """The ``user_id`` slurmctld gives for ``job_id`` in a ``jobs`` answer (the same key in every version)."""
    jobs = payload.get("jobs")
    for raw in jobs if isinstance(jobs, list) else ():
        if isinstance(raw, dict) and number(raw.get("job_id")) == job_id:
            return number(raw.get("user_id"))
    return None
