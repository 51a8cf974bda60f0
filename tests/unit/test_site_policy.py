"""Who an adapter may submit as: people only. uid ranges (UID_MIN from the site's login.defs, a Factory's
uid_ranges), uids never allowed, SlurmUser by name and by uid, nologin shells, and allowed_users where no uid
can be resolved."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from slurm_adapters.errors import UnsafeRequest
from slurm_adapters.safety import PasswdEntry, SitePolicy, login_defs_uid_min, passwd_lookup

PASSWD = """\
root:x:0:0:root:/root:/bin/bash
slurm:x:64030:64030::/nonexistent:/usr/sbin/nologin
slurmadm:x:64030:64030::/var/lib/slurm:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
alice:x:1001:1001::/home/alice:/bin/bash
newbie:x:1500:1500::/home/newbie:/bin/bash
svc:x:1600:1600::/srv:/bin/false
pkg:x:64040:64040::/nonexistent:/bin/bash
carol:x:70001:70001::/home/carol:/bin/zsh
nfsnobody:x:4294967294:4294967294::/:/bin/bash
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(PASSWD)
    return tmp_path


def policy(site: Path, **changes: object) -> SitePolicy:
    """The site's policy; SlurmUser is root, as in the lab, unless ``changes`` say otherwise."""
    fields: dict[str, object] = {
        "slurm_user": "root",
        "lookup": passwd_lookup(site),
        "login_defs": site / "etc/login.defs",
    }
    return SitePolicy(**{**fields, **changes})  # type: ignore[arg-type]


def refused(policy: SitePolicy, user: str) -> str | None:
    try:
        policy.check_user(user, cluster="alpha")
    except UnsafeRequest as exc:
        return exc.message
    return None


def test_people_pass_and_daemons_reserved_uids_and_nologin_accounts_do_not(site: Path) -> None:
    default = policy(site)
    assert [user for user in ("alice", "newbie", "carol") if refused(default, user)] == []
    assert "uid 64030" in (refused(default, "slurm") or "")  # Debian's daemon account, not SlurmUser here
    assert "uid 64030" in (refused(default, "slurmadm") or "")  # its uid, under another name
    assert "uid 65534" in (refused(default, "nobody") or "")
    assert "uid 64040" in (refused(default, "pkg") or "")  # Debian's package-allocated range
    assert "uid 4294967294" in (refused(default, "nfsnobody") or "")
    assert "allows no login" in (refused(default, "svc") or "")
    assert "does not exist" in (refused(default, "mallory") or "")


def test_uid_min_comes_from_the_sites_login_defs(site: Path) -> None:
    (site / "etc/login.defs").write_text("# people\nUID_MIN\t\t\t 1200\nUID_MAX 60000\n")
    assert login_defs_uid_min(site / "etc/login.defs") == 1200
    assert login_defs_uid_min(site / "etc/missing") == 1000
    assert refused(policy(site), "alice") is not None  # 1001 < 1200
    assert refused(policy(site), "newbie") is None


def test_uid_min_is_read_once_and_again_when_login_defs_changes(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    defs = site / "etc/login.defs"
    defs.write_text("UID_MIN 1200\n")
    reads: list[Path] = []
    original = Path.read_text

    def counted(self: Path, *args: Any, **kwargs: Any) -> str:
        if self == defs:
            reads.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counted)
    assert [login_defs_uid_min(defs) for _ in range(5)] == [1200] * 5
    assert len(reads) == 1  # not once per submit
    defs.write_text("UID_MIN 500\nUID_MAX 60000\n")  # another size: a change, even within the mtime's grain
    assert login_defs_uid_min(defs) == 500
    assert len(reads) == 2
    defs.unlink()
    assert login_defs_uid_min(defs) == 1000


def test_uid_ranges_narrow_or_widen_but_never_allow_the_reserved_uids(site: Path) -> None:
    narrow = policy(site, uid_ranges=((65536, 99999),))  # an LDAP-only site
    assert refused(narrow, "carol") is None
    assert "uid 1001" in (refused(narrow, "alice") or "")
    wide = policy(site, uid_ranges=((1, 4294967295),))
    assert refused(wide, "pkg") is None
    for user in ("root", "nobody", "nfsnobody"):
        assert refused(wide, user) is not None, user


def test_the_clusters_slurmuser_is_refused_by_name_and_by_uid(site: Path) -> None:
    own = policy(site, slurm_user="slurmadm", uid_ranges=((1000, 4294967293),))
    assert "privileged" in (refused(own, "slurmadm") or "")
    assert "SlurmUser's uid 64030" in (refused(own, "slurm") or "")  # another name, the same uid


def test_without_a_lookup_only_the_allowed_users_pass() -> None:
    with pytest.raises(ValueError, match="allowed_users"):
        SitePolicy(lookup=None)
    names_only = SitePolicy(lookup=None, allowed_users=re.compile(r"alice|bob"))
    assert refused(names_only, "alice") is None
    assert "allowed_users" in (refused(names_only, "slurmd") or "")
    assert "allowed_users" in (refused(names_only, "alice2") or "")  # a full match, not a prefix
    assert "privileged" in (refused(names_only, "slurm") or "")


def test_allowed_users_applies_on_top_of_the_lookup(site: Path) -> None:
    both = SitePolicy(lookup=passwd_lookup(site), login_defs=None, allowed_users=re.compile("alice"), uid_ranges=None)
    assert refused(both, "alice") is None
    assert "allowed_users" in (refused(both, "carol") or "")
    assert PasswdEntry("x", 1, "/", "/bin/sh") != PasswdEntry("x", 2, "/", "/bin/sh")
