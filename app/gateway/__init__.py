"""The Antenna gateway: a small service an AI Factory Antenna runs in front of the broker for its national users.

National users never hold broker credentials. They present a gateway token (or an OIDC token of the Antenna's
own identity provider); the gateway checks it locally, and forwards the request to the broker with
``Authorization: Antenna <assertion>``, a short-lived JWT signed with the Antenna's private key that names the
user (``sub``), the Antenna (``iss``) and binds exactly this method, path, query and body
(:mod:`broker.antennas.assertion`). Only the user routes of ``/v1`` are forwarded; admin and token routes are
never reachable through an Antenna.

Modules: :mod:`.settings` (environment and the signing key), :mod:`.users` (local authentication),
:mod:`.proxy` (what is forwarded and how), :mod:`.main` (the app factory); ``python -m app.gateway`` runs it.
See docs/antenna-gateway.md.
"""
