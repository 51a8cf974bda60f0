"""AI Factory Antennas: remote gateways that act for their national users.

:mod:`broker.antennas.assertion` is the signed statement an Antenna sends with each request (both halves:
the gateway signs, the broker verifies); :mod:`broker.antennas.service` is what the broker holds about
Antennas and how far it trusts them (their request rates: :class:`broker.identity.limits.RequestRate`).
"""
