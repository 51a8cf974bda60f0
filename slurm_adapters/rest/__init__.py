"""The slurmrestd adapter (``kind="rest"``) and its per-version codecs."""

from slurm_adapters.rest.client import CODECS, RestAdapter

__all__ = ["CODECS", "RestAdapter"]
