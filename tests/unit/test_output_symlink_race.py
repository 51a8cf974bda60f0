"""Reading a job's output while the job's user swaps the file for a symlink: the privileged reader must never
hand out the link's target. A separate process flips the path between the user's own file and a symlink to a
root-owned secret as fast as it can, while the adapter reads it in a bounded loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from slurm_adapters.errors import OutputUnavailable
from slurm_adapters.rest import RestAdapter
from slurm_adapters.safety import SitePolicy, read_owned_tail, site_path
from tests.unit.sites import policy_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another user")

DATA = Path(__file__).parent / "data" / "rest"
OWNER = 4242
SECRET = b"TOP-SECRET-root-only-bytes"
ITERATIONS = 10000  # reads at least, and until the swapped-in link was met MIN_LINKS times
MIN_LINKS = 20
SWAP_SECONDS = 60.0

# Flips ``path`` between a hard link of the user's file and a symlink to the secret, each by an atomic rename.
SWAPPER = """
import os, sys, time
path, real, secret, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
staged_file, staged_link = path + ".f", path + ".l"
end = time.monotonic() + seconds
while time.monotonic() < end:
    os.link(real, staged_file)
    os.rename(staged_file, path)
    os.symlink(secret, staged_link)
    os.rename(staged_link, path)
"""


@dataclass
class Scene:
    root: Path  # the cluster's "/" as seen from here
    inside: str  # the output file's path inside the cluster


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    root = tmp_path / "cluster"
    job_dir = root / "scratch" / "job"
    job_dir.mkdir(parents=True)
    os.chown(job_dir, OWNER, OWNER)
    secret = root / "etc" / "secret"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    secret.chmod(0o600)  # root's, as /etc/shadow or a munge key
    real = job_dir / "real.out"
    real.write_text("the job's own output\n")
    os.chown(real, OWNER, OWNER)
    out = job_dir / "out.txt"
    out.write_text("the job's own output\n")  # another inode than real's: renaming a link of it over works
    os.chown(out, OWNER, OWNER)
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(out), str(real), str(secret), str(SWAP_SECONDS)])
    try:
        yield Scene(root, "/scratch/job/out.txt")
    finally:
        swapper.kill()
        swapper.wait()


def _job(inside: str) -> httpx.Response:
    jobs = json.loads((DATA / "job-get-v0.0.42.json").read_text())
    jobs["jobs"][0].update(standard_output=inside, standard_error="", user_id=OWNER, user_name="alice")
    return httpx.Response(200, json=jobs)


def _rest(scene: Scene, key_file: Path) -> RestAdapter:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/slurm/v0.0.42/ping/":
            return httpx.Response(200, json={"errors": [], "pings": [{"pinged": "UP"}]})
        if request.url.path == "/slurm/v0.0.42/job/2":
            return _job(scene.inside)
        return httpx.Response(404)

    return RestAdapter(
        "alpha", "http://slurmrestd.test", key_file, "root", _alice_policy(), output_root=scene.root,
        transport=httpx.MockTransport(answer),
    )  # fmt: skip


def _alice_policy() -> SitePolicy:
    """The test's site: alice is uid OWNER."""
    return policy_of({"alice": OWNER})


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwt.key"
    path.write_bytes(b"k" * 32)
    return path


async def _race(read: Callable[[], Awaitable[str]]) -> None:
    """Read until the swap was met often enough (bounded): never the secret, and the race really ran."""
    read_ok, refused, leaked = 0, 0, 0
    deadline = time.monotonic() + SWAP_SECONDS - 5
    while time.monotonic() < deadline and (read_ok + refused + leaked < ITERATIONS or refused < MIN_LINKS):
        try:
            text = await read()
        except (OutputUnavailable, PermissionError):
            refused += 1
            continue
        if SECRET.decode() in text:
            leaked += 1
        else:
            read_ok += 1
    outcome = f"{leaked} reads handed out the link's target, {read_ok} read the job's file, {refused} were refused"
    assert leaked == 0, outcome
    # The race really ran: both the user's own file and the swapped-in link were met.
    assert read_ok > 0, outcome
    assert refused >= MIN_LINKS, outcome


async def test_defect_17_rest_output_read_never_follows_a_swapped_symlink(scene: Scene, key_file: Path) -> None:
    rest = _rest(scene, key_file)
    try:
        await _race(lambda: rest.read_output(2, max_bytes=4096))
    finally:
        await rest.aclose()


async def test_the_reader_every_adapter_shares_never_follows_a_swapped_symlink(scene: Scene) -> None:
    path = site_path(scene.root, scene.inside)

    async def read() -> str:
        return read_owned_tail(path, 4096, owner_uid=OWNER)

    await _race(read)
