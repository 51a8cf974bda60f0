"""slurmrestd ``openapi/v0.0.38`` (Slurm 22.05): paths and the submit body.

Wire facts this codec absorbs (measured on 22.05.8 and read from its plugin source):

* the submit body is ``{"job": {...}, "script": "..."}`` and ``environment`` is a required OBJECT
  (HTTP 400 "environment must be set" without it); job options go through sbatch's own option parser;
* the records in its answers are :mod:`slurm_adapters.formats.v0038`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from slurm_adapters.convert import gres_request
from slurm_adapters.formats import RecordFormat, v0038
from slurm_adapters.records import SlurmJobSpec
from slurm_adapters.rest.codec import Codec


class V0038(Codec):
    version = "v0.0.38"
    prefix = "/slurm/v0.0.38"
    ping_path = f"{prefix}/ping"
    diag_path = f"{prefix}/diag"
    submit_path = f"{prefix}/job/submit"
    jobs_path = f"{prefix}/jobs"
    nodes_path = f"{prefix}/nodes"
    partitions_path = f"{prefix}/partitions"
    # jobs_params stays empty: 22.05 lists every job in slurmctld's memory (SHOW_ALL|SHOW_DETAIL,
    # finished ones included) and has no filter to set.
    # openapi/dbv0.0.38: no user filter, its job records are sacct's (see formats.common.accounted_job).
    accounting_prefix = "/slurmdb/v0.0.38"
    records: ClassVar[RecordFormat] = v0038
    sbatch_release: ClassVar[tuple[int, int]] = (22, 5)

    def render_submit(self, spec: SlurmJobSpec, script: str, environment: Mapping[str, str]) -> dict[str, Any]:
        job = self.job_fields(
            spec,
            environment=dict(environment),
            nodes=spec.nodes,
            memory_per_node=spec.memory_mb,
            gres=gres_request(spec.gpus_per_node, spec.gpu_type),  # sbatch --gres: per node, typed or not
            time_limit=spec.time_limit_min,
        )
        # 22.05's v0.0.38 parser declares ``requeue`` and ignores it, on submit and on update alike (measured on
        # 22.05.8: Requeue stays at the cluster's JobRequeue); it is not sent rather than sent for nothing.
        job.pop("requeue", None)
        return {"job": job, "script": script}
