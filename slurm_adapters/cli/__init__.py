"""The Slurm command-line adapter: sbatch, squeue, scontrol, scancel and sinfo as subprocesses.

It needs nothing but Slurm's own client tools where it runs (a login node, a chroot, or behind an
``exec_prefix`` such as ``["chroot", DIR]``), which makes it the adapter of last resort for any site.

What each release offers, and therefore what this adapter runs (measured on 22.05.8, 24.11.5, 26.05.5):

* **One job** - 23.02+: ``scontrol show job ID --json`` (data_parser v0.0.4x; an unknown id gives an empty
  ``jobs`` list). 22.05 has **no** ``scontrol --json``, so there it is ``scontrol show job -o ID``: one line
  of ``key=value`` parsed with :func:`slurm_adapters.convert.parse_key_values` ("Invalid job id specified"
  for an unknown id).
* **Every job** - 23.02+: ``squeue --json --states=all`` (24.11+ hides finished jobs without the filter).
  On 22.05 ``squeue --json`` **ignores every filter** and always returns every job in slurmctld's memory,
  finished ones within MinJobAge included, which is exactly the one-call listing the broker needs; the tag
  filter is applied here.
* **Nodes** - 22.05: ``sinfo --json`` (top-level ``nodes``); 23.02+: ``scontrol show node --json`` (24.11's
  ``sinfo --json`` groups nodes and no longer lists them one by one). **Partitions** - ``scontrol show
  partition -o`` on every release.
* **Cancel** - ``scancel`` exits 0 for unknown and finished jobs, so the job is looked up first.

The release is read once per adapter from ``sbatch --version``. Releases between 22.05 and 24.11 take
the 23.02+ paths; they have not been run against.
"""

from slurm_adapters.cli.adapter import CliAdapter

__all__ = ["CliAdapter"]
