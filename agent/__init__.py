"""conveyor-agent: the Factory agent a site runs next to its Slurm.

It opens every connection to the broker itself, takes orders by long poll, carries them out with the
project's own Slurm adapters (:mod:`slurm_adapters`) under the site's policy, and reports back. It keeps
nothing on disk between runs and imports neither ``broker`` nor ``app``: the broker's ledger and Slurm's tags
are the truth.
"""

from __future__ import annotations

__version__ = "0.1.0"
