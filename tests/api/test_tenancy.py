"""Tenancy by project, through real tokens on SQLite and PostgreSQL: a researcher submits only to its projects
and sees only its own jobs there; a PI sees and acts on every job of its project; anyone else gets the 404 of
a job that does not exist, on every /v1/jobs route. Membership is granted by the broker (admins, a project's
PIs for researchers), never by anything a caller sends."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from broker.db.repositories.identity import IdentityRepository
from tests.api.conftest import PROJECT, Broker, job_body
from tests.api.test_jobs import problem_of

OTHER_PROJECT = "EHPC-AIF-2026PG02-0042"


@dataclass
class World:
    alice: str  # researcher in PROJECT
    bob: str  # researcher in PROJECT
    carol: str  # PI of PROJECT
    dave: str  # researcher in OTHER_PROJECT only
    alice_id: str
    bob_id: str


@pytest.fixture
async def world(broker: Broker) -> World:
    carol_id, carol = await broker.user("carol")
    await broker.join_project(broker.admin_token, carol_id, "pi")
    alice_id, alice = await broker.user("alice")
    await broker.join_project(carol, alice_id, "researcher")  # a PI adds researchers to its project
    bob_id, bob = await broker.user("bob")
    await broker.join_project(carol, bob_id, "researcher")
    dave_id, dave = await broker.user("dave")
    await broker.join_project(broker.admin_token, dave_id, "researcher", OTHER_PROJECT)
    return World(alice, bob, carol, dave, alice_id, bob_id)


async def submit(broker: Broker, token: str, project: str = PROJECT) -> str:
    async with broker.client(token) as client:
        response = await client.post("/v1/jobs", json=job_body(project=project))
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


async def test_a_user_submits_only_to_projects_it_belongs_to(broker: Broker, world: World) -> None:
    await submit(broker, world.alice)
    async with broker.client(world.alice) as alice:
        problem = problem_of(await alice.post("/v1/jobs", json=job_body(project=OTHER_PROJECT)), 403, "forbidden")
        assert OTHER_PROJECT in (problem.detail or "")
        problem_of(await alice.post("/v1/jobs", json=job_body(project="EHPC-NO-SUCH-0001")), 403, "forbidden")
    async with broker.client(broker.admin_token) as admin:  # an admin manages projects, it is no member of them
        problem_of(await admin.post("/v1/jobs", json=job_body()), 403, "forbidden")


async def test_defect_01_a_dry_run_is_authorized_exactly_like_a_submit(broker: Broker, world: World) -> None:
    impossible = job_body(project=OTHER_PROJECT, resources={"time_limit_min": 500})  # refused before placement
    async with broker.client(world.alice) as alice, broker.client(world.dave) as dave, \
            broker.client(broker.admin_token) as admin:  # fmt: skip
        for client, body in (
            (alice, job_body(project=OTHER_PROJECT)),  # another project
            (alice, job_body(project="EHPC-NO-SUCH-0001")),  # no such project
            (alice, impossible),
            (dave, job_body()),
            (admin, job_body()),  # an admin manages projects, it is no member of them
        ):
            submitted = problem_of(await client.post("/v1/jobs", json=body), 403, "forbidden")
            dry = await client.post("/v1/jobs", params={"dry_run": "true"}, json=body)
            assert problem_of(dry, 403, "forbidden") == submitted, dry.text
            assert "site_user" not in dry.text
        mine = await alice.post("/v1/jobs", params={"dry_run": "true"}, json=job_body())
    assert mine.status_code == 200, mine.text
    assert mine.json()["rendering"]["site_user"] == "alice"


@pytest.mark.parametrize("who", ["bob (same project, researcher)", "dave (another project)"])
async def test_every_jobs_route_answers_404_for_a_job_the_caller_may_not_see(
    broker: Broker, world: World, who: str
) -> None:
    job_id = await submit(broker, world.alice)
    token = world.bob if who.startswith("bob") else world.dave
    async with broker.client(token) as intruder, broker.client(world.alice) as alice:
        for method, path in [
            ("GET", f"/v1/jobs/{job_id}"),
            ("GET", f"/v1/jobs/{job_id}/events"),
            ("GET", f"/v1/jobs/{job_id}/output"),
            ("POST", f"/v1/jobs/{job_id}/cancel"),
        ]:
            theirs = await intruder.request(method, path)
            missing = await intruder.request(method, path.replace(job_id, "job_aaaaaaaaaaaaaaaaaaaa"))
            a = problem_of(theirs, 404, "not_found").model_dump(exclude={"instance", "detail"})
            b = problem_of(missing, 404, "not_found").model_dump(exclude={"instance", "detail"})
            assert a == b, (method, path)
        assert job_id not in [job["id"] for job in (await intruder.get("/v1/jobs")).json()["items"]]
        mine = await alice.get(f"/v1/jobs/{job_id}")
        assert mine.status_code == 200
        assert mine.json()["cancel_requested"] is False  # the intruder's cancel did nothing


async def test_a_pi_sees_lists_and_cancels_every_job_of_its_project(broker: Broker, world: World) -> None:
    alices = await submit(broker, world.alice)
    bobs = await submit(broker, world.bob)
    daves = await submit(broker, world.dave, OTHER_PROJECT)
    async with broker.client(world.carol) as carol:
        listed = [job["id"] for job in (await carol.get("/v1/jobs")).json()["items"]]
        assert set(listed) == {alices, bobs}
        assert (await carol.get(f"/v1/jobs/{bobs}/events")).status_code == 200
        assert (await carol.post(f"/v1/jobs/{alices}/cancel")).status_code == 202
        problem_of(await carol.get(f"/v1/jobs/{daves}"), 404, "not_found")
    async with broker.client(world.alice) as alice:
        assert [job["id"] for job in (await alice.get("/v1/jobs")).json()["items"]] == [alices]


async def test_leaving_a_project_hides_its_jobs_even_ones_own(broker: Broker, world: World) -> None:
    job_id = await submit(broker, world.bob)
    async with broker.client(world.carol) as carol:
        assert (await carol.delete(f"/v1/projects/{PROJECT}/members/{world.bob_id}")).status_code == 204
    async with broker.client(world.bob) as bob:
        problem_of(await bob.get(f"/v1/jobs/{job_id}"), 404, "not_found")
        problem_of(await bob.post("/v1/jobs", json=job_body()), 403, "forbidden")


async def test_only_admins_make_pis_and_projects_and_researchers_grant_nothing(broker: Broker, world: World) -> None:
    async with broker.client(world.carol) as carol:
        problem_of(await carol.put(f"/v1/projects/{PROJECT}/members/{world.bob_id}", json={"role": "pi"}), 403,
                   "forbidden")  # fmt: skip
        problem_of(await carol.post("/v1/admin/projects", json={"id": "EHPC-X-1", "title": "x"}), 403, "forbidden")
        # A PI manages its own project only: another project is not there for it.
        problem_of(await carol.put(f"/v1/projects/{OTHER_PROJECT}/members/{world.bob_id}",
                                   json={"role": "researcher"}), 404, "not_found")  # fmt: skip
    async with broker.client(world.alice) as alice:
        problem_of(await alice.put(f"/v1/projects/{PROJECT}/members/{world.bob_id}", json={"role": "researcher"}),
                   404, "not_found")  # fmt: skip
        projects = (await alice.get("/v1/projects")).json()
        assert [(p["id"], p["role"]) for p in projects] == [(PROJECT, "researcher")]
        members = {(m["name"], m["role"]) for m in (await alice.get(f"/v1/projects/{PROJECT}/members")).json()}
        assert members == {("carol", "pi"), ("alice", "researcher"), ("bob", "researcher")}
    async with broker.client(world.dave) as dave:
        problem_of(await dave.get(f"/v1/projects/{PROJECT}/members"), 404, "not_found")


async def test_a_spec_cannot_make_its_sender_a_member_and_membership_changes_are_audited(
    broker: Broker, world: World
) -> None:
    async with broker.client(world.dave) as dave:
        body = job_body(labels={"project": PROJECT, "role": "pi"})
        problem_of(await dave.post("/v1/jobs", json=body), 403, "forbidden")
    log = await IdentityRepository(broker.db).audit_log(limit=50)
    granted = [(e.target, e.detail.get("user"), e.detail.get("role")) for e in log if e.action == "project.member_set"]
    assert (PROJECT, world.alice_id, "researcher") in granted
    assert any(e.action == "project.created" and e.target == PROJECT for e in log)
    assert any(e.action == "user.created" and e.detail.get("name") == "alice" for e in log)


async def test_submit_and_cancel_events_say_who_and_from_where(broker: Broker, world: World) -> None:
    job_id = await submit(broker, world.alice)
    async with broker.client(world.alice) as alice:
        assert (await alice.post(f"/v1/jobs/{job_id}/cancel")).status_code == 202
        events = (await alice.get(f"/v1/jobs/{job_id}/events")).json()["items"]
    by_kind = {event["kind"]: event for event in events}
    for kind in ("created", "cancel_requested"):
        assert by_kind[kind]["actor"] == world.alice_id
        assert by_kind[kind]["detail"]["source"] == "127.0.0.1"  # httpx's ASGI transport's client address


async def test_a_user_cannot_choose_the_slurm_account_or_qos(broker: Broker, world: World) -> None:
    """The site account and QOS come from the broker's mapping, never from the job spec: asking is a 422 that
    names the field (unknown fields are refused, not dropped)."""
    async with broker.client(world.alice) as alice:
        for where, body in [
            ("account", job_body(account="ehpc-aif-other")),
            ("qos", job_body(qos="high")),
            ("resources.account", job_body(resources={"time_limit_min": 20, "account": "root"})),
            ("resources.qos", job_body(resources={"time_limit_min": 20, "qos": "high"})),
        ]:
            problem = problem_of(await alice.post("/v1/jobs", json=body), 422, "validation_error")
            assert where in (problem.detail or ""), (where, problem.detail)
