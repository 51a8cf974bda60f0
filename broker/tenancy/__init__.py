"""Tenancy: projects and their members, allocations (reserve at acceptance, charge at the end), and the site
accounts jobs run as."""
