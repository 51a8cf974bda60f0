"""Factories: the registry of declared clusters, their adapters, health, the API's view of them, and placement."""
