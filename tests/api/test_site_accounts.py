"""Site accounts through the API on SQLite and PostgreSQL: only a Factory's operators (named by admins) and
admins map users and projects to Slurm users; privileged users are refused when the mapping is made; users
read their own mappings; a dry run renders the job as the mapped user with the mapped account."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.api.conftest import PROJECT, Broker, job_body
from tests.api.test_jobs import problem_of


@dataclass
class Site:
    operator: str  # operates alpha
    alice: str
    alice_id: str


@pytest.fixture
async def site(broker: Broker) -> Site:
    operator_id, operator = await broker.user("op")
    async with broker.client(broker.admin_token) as admin:
        named = await admin.put(f"/v1/admin/factories/alpha/operators/{operator_id}")
        assert named.status_code == 204, named.text
    alice_id, alice = await broker.user("alice")
    await broker.join_project(broker.admin_token, alice_id, "researcher")
    return Site(operator, alice, alice_id)


async def test_an_operator_maps_a_user_and_the_user_reads_it_and_runs_as_it(broker: Broker, site: Site) -> None:
    async with broker.client(site.operator) as operator:
        mapped = await operator.put(
            f"/v1/factories/alpha/accounts/user/{site.alice_id}", json={"slurm_user": "bob", "slurm_account": "acct-9"}
        )
        assert mapped.status_code == 200, mapped.text
    async with broker.client(site.alice) as alice:
        mine = (await alice.get("/v1/me/accounts")).json()
        assert [(m["factory"], m["kind"], m["slurm_user"], m["slurm_account"]) for m in mine] == [
            ("alpha", "user", "bob", "acct-9")
        ]
        dry = (await alice.post("/v1/jobs?dry_run=true", json=job_body(placement={"factory": "alpha"}))).json()
        assert dry["rendering"]["site_user"] == "bob"
        assert dry["rendering"]["payload"]["job"]["account"] == "acct-9"
        # The user can read its mapping but not change it.
        problem_of(await alice.put(f"/v1/factories/alpha/accounts/user/{site.alice_id}", json={"slurm_user": "alice"}),
                   403, "forbidden")  # fmt: skip


async def test_a_project_mapping_applies_when_the_user_has_none(broker: Broker, site: Site) -> None:
    async with broker.client(site.operator) as operator:
        response = await operator.put(f"/v1/factories/alpha/accounts/project/{PROJECT}", json={"slurm_user": "bob"})
        assert response.status_code == 200, response.text
    async with broker.client(site.alice) as alice:
        dry = (await alice.post("/v1/jobs?dry_run=true", json=job_body(placement={"factory": "alpha"}))).json()
    assert dry["rendering"]["site_user"] == "bob"


@pytest.mark.parametrize("user", ["root", "slurm"])
async def test_mappings_to_root_or_slurmuser_are_refused_when_made(broker: Broker, site: Site, user: str) -> None:
    async with broker.client(site.operator) as operator:
        response = await operator.put(f"/v1/factories/alpha/accounts/user/{site.alice_id}", json={"slurm_user": user})
    problem = problem_of(response, 422, "validation_error")
    assert "privileged" in (problem.detail or "")


async def test_only_the_factorys_operators_and_admins_map_its_accounts(broker: Broker, site: Site) -> None:
    async with broker.client(site.operator) as operator:  # an operator of alpha, not of bravo
        problem_of(await operator.put(f"/v1/factories/bravo/accounts/user/{site.alice_id}", json={"slurm_user": "bob"}),
                   403, "forbidden")  # fmt: skip
        problem_of(await operator.put("/v1/admin/factories/bravo/operators/usr_x"), 403, "forbidden")
    async with broker.client(broker.admin_token) as admin:
        response = await admin.put(f"/v1/factories/bravo/accounts/user/{site.alice_id}", json={"slurm_user": "bob"})
        assert response.status_code == 200, response.text
        assert (await admin.delete(f"/v1/factories/bravo/accounts/user/{site.alice_id}")).status_code == 204
        problem_of(await admin.delete(f"/v1/factories/bravo/accounts/user/{site.alice_id}"), 404, "not_found")


# alpha's site (tests/api/conftest.py SITE_PASSWD): every one a daemon, a reserved uid or an account that
# cannot log in; its SlurmUser is Slurm's default, "slurm".
NOT_PEOPLE = ["root", "daemon", "slurm", "nobody", "backup-svc", "pkg-daemon", "nfsnobody"]


async def test_defect_02_daemon_reserved_and_nologin_accounts_are_refused_when_mapped(
    broker: Broker, site: Site
) -> None:
    accepted = []
    async with broker.client(site.operator) as operator:
        for user in NOT_PEOPLE:
            response = await operator.put(
                f"/v1/factories/alpha/accounts/user/{site.alice_id}", json={"slurm_user": user}
            )
            if response.status_code != 422:
                accepted.append(user)
                continue
            problem = problem_of(response, 422, "validation_error")
            assert user in (problem.detail or ""), problem
        # A person with an LDAP uid above 65535 is no daemon.
        carol = await operator.put(f"/v1/factories/alpha/accounts/user/{site.alice_id}", json={"slurm_user": "carol"})
        assert carol.status_code == 200, carol.text
    assert accepted == [], f"mapped to {accepted}"


async def test_a_factory_that_resolves_no_uids_maps_only_its_allowed_users(broker: Broker, site: Site) -> None:
    async with broker.client(broker.admin_token) as admin:  # bravo: user_lookup none, allowed_users alice|bob
        refused = await admin.put(f"/v1/factories/bravo/accounts/user/{site.alice_id}", json={"slurm_user": "carol"})
        problem = problem_of(refused, 422, "validation_error")
        assert "allowed_users" in (problem.detail or "")
        mapped = await admin.put(f"/v1/factories/bravo/accounts/user/{site.alice_id}", json={"slurm_user": "bob"})
        assert mapped.status_code == 200, mapped.text
