"""The pyslurm adapter: libslurm in one worker process per cluster, where that cluster's Slurm lives.

:mod:`.adapter` is the async side the broker (or the agent) holds; :mod:`.worker` is the process that imports
pyslurm; :mod:`.protocol` is the wire format between them and :mod:`.mapping` the translation both sides share.
"""
