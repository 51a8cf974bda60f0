"""The background loops: the dispatcher (claim, place, submit), the reconciler (one listing per Factory per
cycle), the settling of attempts in doubt, and the runtime that runs them in one process."""
