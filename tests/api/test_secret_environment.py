"""A job's ``secret_environment`` through the API, on SQLite and PostgreSQL: stored sealed (no column of any table,
and no byte of SQLite's files, holds a value), shown redacted in every answer (the job, listings, events, a replay,
a dry run, /metrics, problems), fingerprinted whole for Idempotency-Key, and refused by a broker without a key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from app.main import StartupRefused, create_app
from broker.db.engine import Database
from broker.db.models import IdempotencyKey
from broker.db.models import Job as JobRow
from broker.jobs.idempotency import request_hash
from broker.jobs.secrets import REDACTED
from broker.secret_box import DEV_KEY_FILE_NAME, SecretBox
from conveyor.models import DryRun, Job
from conveyor.spec import JobSpec
from tests.api.conftest import PROJECT, TOKEN, Api, Broker, api_settings, client_for, job_body
from tests.api.test_jobs import problem_of
from tests.db.plaintext import columns_holding, sqlite_files_holding

SECRET = "hf_Zq7secretVALUE-9f3a1c"  # the value every check looks for
OTHER_SECRET = "hf_another-secret-42b7"


def secret_job(value: str = SECRET, **changes: Any) -> dict[str, Any]:
    return job_body(environment={"PLAIN": "visible"}, secret_environment={"HF_TOKEN": value}, **changes)


def shows_no_secret(response: httpx.Response) -> httpx.Response:
    assert SECRET not in response.text, response.text
    return response


async def assert_nowhere_stored(db: Database, url: str, *values: str) -> None:
    for value in values:
        assert await columns_holding(db, value) == [], value
        assert sqlite_files_holding(url, value) == [], value


async def test_a_secret_is_stored_sealed_and_every_answer_shows_it_redacted(api: Api, database_url: str) -> None:
    key = {"Idempotency-Key": "secret-job-1"}
    created = shows_no_secret(await api.client.post("/v1/jobs", json=secret_job(), headers=key))
    assert created.status_code == 201, created.text
    job = Job.model_validate(created.json())
    assert job.spec.secret_environment == {"HF_TOKEN": REDACTED}  # the name is kept, the value is not
    assert job.spec.environment == {"PLAIN": "visible"}
    replay = shows_no_secret(await api.client.post("/v1/jobs", json=secret_job(), headers=key))
    assert (replay.status_code, replay.json()["id"]) == (200, job.id)
    for path in (f"/v1/jobs/{job.id}", "/v1/jobs", f"/v1/jobs/{job.id}/events", "/metrics"):
        answer = shows_no_secret(await api.client.get(path))
        assert answer.status_code == 200, (path, answer.text)
    assert Job.model_validate((await api.client.get(f"/v1/jobs/{job.id}")).json()).spec == job.spec
    await assert_nowhere_stored(api.db, database_url, SECRET)
    # Sealed, not lost: the test broker's own key (dev mode: made in its data dir) opens the job's values.
    async with api.db.read() as session:
        sealed = await session.scalar(select(JobRow.secrets).where(JobRow.id == job.id))
    assert sealed is not None
    assert SecretBox.from_file(api.settings.data_dir / DEV_KEY_FILE_NAME).open(sealed) == {"HF_TOKEN": SECRET}


async def test_a_dry_run_renders_the_secrets_names_with_the_marker_and_stores_nothing(
    api: Api, database_url: str
) -> None:
    response = shows_no_secret(await api.client.post("/v1/jobs", params={"dry_run": "true"}, json=secret_job()))
    assert response.status_code == 200, response.text
    dry = DryRun.model_validate(response.json())
    environment = response.json()["rendering"]["payload"]["job"]["environment"]  # slurmrestd's NAME=value entries
    assert f"HF_TOKEN={REDACTED}" in environment
    assert "PLAIN=visible" in environment
    assert SECRET not in dry.rendering.script
    await assert_nowhere_stored(api.db, database_url, SECRET)


async def test_the_same_key_with_another_secret_is_another_request(api: Api) -> None:
    key = {"Idempotency-Key": "secret-job-2"}
    first = await api.client.post("/v1/jobs", json=secret_job(), headers=key)
    assert first.status_code == 201, first.text
    again = await api.client.post("/v1/jobs", json=secret_job(), headers=key)
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])
    other = await api.client.post("/v1/jobs", json=secret_job(OTHER_SECRET), headers=key)
    problem_of(other, 409, "idempotency_conflict")
    assert OTHER_SECRET not in other.text
    # The fingerprint is keyed: not the plain SHA-256 of the request, which a guess of the secret could confirm.
    async with api.db.read() as session:
        stored = await session.scalar(
            select(IdempotencyKey.request_hash).where(IdempotencyKey.key == key["Idempotency-Key"])
        )
    plain = request_hash(JobSpec.model_validate(secret_job()).model_dump(mode="json"))
    assert stored is not None
    assert stored != plain


BAD_BODIES = {
    "an unknown field": secret_job(gpus=1),
    "an invalid name": job_body(secret_environment={"1HF_TOKEN": SECRET}),
    "a reserved name": job_body(secret_environment={"SLURM_HF_TOKEN": SECRET}),
    "a NUL byte": job_body(secret_environment={"HF_TOKEN": SECRET + "\x00"}),
    "a value too long": job_body(secret_environment={"HF_TOKEN": SECRET * 2000}),
    "a name in both maps": job_body(environment={"HF_TOKEN": "x"}, secret_environment={"HF_TOKEN": SECRET}),
    "a value of the wrong type": job_body(secret_environment={"HF_TOKEN": [SECRET]}),
    "a time limit no Factory has": secret_job(resources={"time_limit_min": 500}),
    "a directory outside the roots": secret_job(working_directory="/etc"),
}


@pytest.mark.parametrize("dry_run", [False, True], ids=["submit", "dry-run"])
@pytest.mark.parametrize("body", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
async def test_a_refused_request_never_echoes_its_secret(
    api: Api, database_url: str, body: dict[str, Any], dry_run: bool
) -> None:
    response = await api.client.post("/v1/jobs", params={"dry_run": str(dry_run).lower()}, json=body)
    assert response.status_code == 422, response.text
    shows_no_secret(response)
    await assert_nowhere_stored(api.db, database_url, SECRET)


async def test_a_body_that_is_not_json_never_echoes_its_secret(api: Api) -> None:
    broken = f'{{"name": "a", "secret_environment": {{"HF_TOKEN": "{SECRET}"}}, '
    response = await api.client.post("/v1/jobs", content=broken, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422), response.text
    shows_no_secret(response)


async def test_without_a_key_a_job_with_secrets_is_refused_and_one_without_is_accepted(
    broker: Broker, database_url: str
) -> None:
    user_id, token = await broker.user("alice")
    await broker.join_project(broker.admin_token, user_id, "researcher")
    async with broker.client(token) as alice:
        for params in ({}, {"dry_run": "true"}):
            refused = await alice.post("/v1/jobs", params=params, json=secret_job(project=PROJECT))
            problem = problem_of(refused, 422, "secrets_not_configured")
            assert "HF_TOKEN" in (problem.detail or "")
            shows_no_secret(refused)
        accepted = await alice.post("/v1/jobs", json=job_body(project=PROJECT, environment={"PLAIN": "visible"}))
        assert accepted.status_code == 201, accepted.text
    await assert_nowhere_stored(broker.db, database_url, SECRET)


@pytest.mark.parametrize("content", [None, "not a key\n", ""], ids=["missing", "garbage", "empty"])
async def test_startup_refuses_a_secrets_key_file_it_cannot_use(
    tmp_path: Path, database_url: str, content: str | None
) -> None:
    key_file = tmp_path / "secrets.key"
    if content is not None:
        key_file.write_text(content)
    app = create_app(api_settings(tmp_path, database_url, secrets_key_file=key_file))
    with pytest.raises(StartupRefused, match=r"secrets key file"):
        async with app.router.lifespan_context(app):
            pass


async def test_a_configured_key_file_is_used_and_none_is_made_beside_it(
    tmp_path: Path, database_url: str, db: Database
) -> None:
    key_file = tmp_path / "configured.key"
    key = Fernet.generate_key()
    key_file.write_bytes(b"# the first key seals; the others only open\n" + key + b"\n" + Fernet.generate_key() + b"\n")
    app = create_app(api_settings(tmp_path, database_url, secrets_key_file=key_file))
    async with app.router.lifespan_context(app), client_for(app, TOKEN) as client:
        response = await client.post("/v1/jobs", json=secret_job())
        assert response.status_code == 201, response.text
    assert not (tmp_path / DEV_KEY_FILE_NAME).exists()  # dev mode makes one only when none is configured
    async with db.read() as session:
        sealed = await session.scalar(select(JobRow.secrets))
    assert sealed is not None
    assert SecretBox([key]).open(sealed) == {"HF_TOKEN": SECRET}


async def test_after_a_key_rotation_the_same_request_replays_and_another_still_conflicts(
    tmp_path: Path, database_url: str
) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    key_file = tmp_path / "rotating.key"
    key = {"Idempotency-Key": "secret-job-rotation"}

    async def submit(secret: str) -> httpx.Response:
        app = create_app(api_settings(tmp_path, database_url, secrets_key_file=key_file))
        async with app.router.lifespan_context(app), client_for(app, TOKEN) as client:
            return shows_no_secret(await client.post("/v1/jobs", json=secret_job(secret), headers=key))

    key_file.write_bytes(old + b"\n")
    created = await submit(SECRET)
    assert created.status_code == 201, created.text
    key_file.write_bytes(new + b"\n" + old + b"\n")  # the rotation: the new key first, the old one kept below
    replay = await submit(SECRET)
    assert (replay.status_code, replay.json()["id"]) == (200, created.json()["id"])
    other = await submit("hf_another-value-after-rotation")
    assert other.status_code == 409, other.text
