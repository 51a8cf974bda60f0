"""The broker's side of the Factory agent's link, without HTTP: how its requests are authenticated and its keys
registered, its sessions and the fenced lease, the order mailbox, the bell that wakes waiters, the adapter that
speaks to Slurm through orders, and the service the agent's routes call. Never imports FastAPI."""
