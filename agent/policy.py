"""The site's sovereignty: which of the broker's requesters may run here, as which site accounts, charging which
Slurm accounts, on which partitions, how large. The policy is the final word; the broker's mapping is a request.

A compromised broker can ask for anything; the policy can never allow root, SlurmUser, a daemon or system
account, ``nobody``, or a site user it does not list. Beyond that it can allow exactly what it lists: it
cannot tell a forged order for a listed account from a real one.

The file (YAML)::

    site_users: [alice, bob]            # the only accounts jobs ever run as
    rules:                              # the first rule matching the requester decides
      - users: ["*"]                    # the broker's user ids ("*": any)
        projects: [EHPC-AIF-2026PG01-1147]
        antennas: ["*"]                 # Antenna ids ("*": any); direct submissions: direct (default true)
        run_as: proposed                # accept the broker's proposed site user if listed here, or an account name
        site_users: [alice]             # this rule's accounts (default: all of site_users)
    accounts: [ehpc-aif-test]           # Slurm accounts jobs may charge (absent: any)
    default_account: ehpc-aif-test      # set on a job that names none
    partitions: [cpu, gpu]              # absent: any
    default_partition: cpu              # set on a job that names none (else, with partitions, refused)
    max_nodes: 4
    max_gpus: 8                         # nodes x GPUs per node
    max_time_min: 120                   # a job without a time limit is then refused
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.config import AgentConfigError, explain, read_yaml
from slurm_adapters.agent_protocol import Requester
from slurm_adapters.errors import SlurmError, UnsafeRequest
from slurm_adapters.records import SlurmJobSpec
from slurm_adapters.safety import SitePolicy, is_user_name

# Never a job's account, whatever a policy file lists: root, Slurm's and munge's users, and the system accounts
# every Debian and RHEL-like host has (a site without a uid look-up cannot tell them by uid).
NEVER_RUN_AS: Final = frozenset(
    {
        "root", "slurm", "slurmrestd", "munge", "nobody", "nfsnobody", "daemon", "bin", "sys", "sync", "games",
        "man", "lp", "mail", "news", "uucp", "proxy", "www-data", "backup", "list", "irc", "gnats", "adm",
        "operator", "halt", "shutdown", "ftp", "sshd", "systemd-network", "messagebus", "polkitd", "postgres",
    }
)  # fmt: skip

Account = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")]
Pattern = Annotated[str, Field(min_length=1, max_length=255)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(_Strict):
    """Who (broker user, project, Antenna) may run, and as which site accounts."""

    users: tuple[Pattern, ...] = ("*",)
    projects: tuple[Pattern, ...] = ("*",)
    antennas: tuple[Pattern, ...] = ("*",)
    direct: bool = True
    run_as: Literal["proposed"] | Account = "proposed"
    site_users: tuple[Account, ...] | None = None

    def matches(self, requester: Requester) -> bool:
        via_ok = self.direct if requester.antenna is None else _listed(requester.antenna, self.antennas)
        return via_ok and _listed(requester.user, self.users) and _listed(requester.project, self.projects)


def _listed(name: str, patterns: tuple[str, ...]) -> bool:
    return "*" in patterns or name in patterns


class PolicyFile(_Strict):
    site_users: tuple[Account, ...] = Field(min_length=1)
    rules: tuple[Rule, ...] = Field(min_length=1)
    accounts: tuple[Account, ...] | None = None
    default_account: Account | None = None
    partitions: tuple[Account, ...] | None = None
    default_partition: Account | None = None
    max_nodes: int | None = Field(None, ge=1)
    max_gpus: int | None = Field(None, ge=0)
    max_time_min: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> PolicyFile:
        for user in self.site_users:
            if not is_user_name(user) or user in NEVER_RUN_AS:
                raise ValueError(f"site_users lists {user!r}, which can never run jobs")
        for index, rule in enumerate(self.rules):
            extra = set(rule.site_users or ()) - set(self.site_users)
            if rule.run_as != "proposed":
                extra |= {rule.run_as} - set(self.site_users)
            if extra:
                raise ValueError(f"rules[{index}] names {sorted(extra)}, which site_users does not list")
        if self.accounts is not None and self.default_account is not None and self.default_account not in self.accounts:
            raise ValueError(f"default_account {self.default_account!r} is not in accounts")
        if (
            self.partitions is not None
            and self.default_partition is not None
            and self.default_partition not in self.partitions
        ):
            raise ValueError(f"default_partition {self.default_partition!r} is not in partitions")
        return self


class Refusal(Exception):
    """The site says no, before anything reached Slurm; ``reason`` is what the user sees. ``error`` is the
    contract's error class the report carries: :class:`UnsafeRequest` (the policy refuses the job as asked), or
    a :class:`SiteError` where the refusal is the site's state (paused, fenced, out of time), not the job's."""

    def __init__(self, reason: str, error: type[SlurmError] = UnsafeRequest) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


@dataclass(frozen=True, slots=True)
class Decision:
    """What the site allows: run ``spec`` (account and partition possibly filled in) as ``site_user``."""

    site_user: str
    spec: SlurmJobSpec


@dataclass(frozen=True)
class SitePolicyFile:
    """The policy file, applied on top of the adapter's own :class:`SitePolicy` (uids, shells, SlurmUser)."""

    rules: PolicyFile
    safety: SitePolicy

    def check_site_user(self, user: str) -> None:
        """Refuse (with the reason) a site account the policy does not list or that is never a person's."""
        if user in NEVER_RUN_AS or user == self.safety.slurm_user:
            raise Refusal(f"site user {user!r} is a privileged or system account and never runs jobs here")
        if user not in self.rules.site_users:
            raise Refusal(f"site user {user!r} is not listed in this site's policy")
        try:
            self.safety.check_user(user)
        except UnsafeRequest as exc:
            raise Refusal(exc.message) from None

    def decide(self, spec: SlurmJobSpec, proposed_user: str, requester: Requester) -> Decision:
        """The account ``spec`` runs as, or :class:`Refusal`."""
        rule = next((rule for rule in self.rules.rules if rule.matches(requester)), None)
        if rule is None:
            via = f" via Antenna {requester.antenna!r}" if requester.antenna else ""
            raise Refusal(
                f"user {requester.user!r} of project {requester.project!r}{via} may not run jobs at this site"
            )
        site_user = proposed_user if rule.run_as == "proposed" else rule.run_as
        self.check_site_user(site_user)
        allowed = rule.site_users if rule.site_users is not None else self.rules.site_users
        if site_user not in allowed:
            raise Refusal(f"site user {site_user!r} is not allowed for this requester by the site's policy")
        return Decision(site_user=site_user, spec=self._limits(spec))

    def _limits(self, spec: SlurmJobSpec) -> SlurmJobSpec:
        p = self.rules
        changes: dict[str, object] = {}
        account = spec.account if spec.account is not None else p.default_account
        if account is not None and p.accounts is not None and account not in p.accounts:
            raise Refusal(f"Slurm account {account!r} is not allowed by the site's policy")
        if account != spec.account:
            changes["account"] = account
        partition = spec.partition if spec.partition is not None else p.default_partition
        if p.partitions is not None:
            if partition is None:
                raise Refusal("the job names no partition and the site's policy sets no default_partition")
            if partition not in p.partitions:
                raise Refusal(f"partition {partition!r} is not allowed by the site's policy")
        if partition != spec.partition:
            changes["partition"] = partition
        if p.max_nodes is not None and spec.nodes > p.max_nodes:
            raise Refusal(f"{spec.nodes} nodes exceed the site's largest job ({p.max_nodes} nodes)")
        gpus = spec.nodes * spec.gpus_per_node
        if p.max_gpus is not None and gpus > p.max_gpus:
            raise Refusal(f"{gpus} GPUs exceed the site's largest job ({p.max_gpus} GPUs)")
        if p.max_time_min is not None:
            if spec.time_limit_min is None:
                raise Refusal(f"the job has no time limit; the site's policy allows at most {p.max_time_min} min")
            if spec.time_limit_min > p.max_time_min:
                raise Refusal(
                    f"a time limit of {spec.time_limit_min} min exceeds the site's largest job ({p.max_time_min} min)"
                )
        return dataclasses.replace(spec, **changes) if changes else spec  # type: ignore[arg-type]


def load_policy(path: Path, safety: SitePolicy) -> SitePolicyFile:
    document = read_yaml(path, "policy file")
    try:
        return SitePolicyFile(PolicyFile.model_validate(document), safety)
    except ValidationError as exc:
        raise AgentConfigError(explain(exc, f"policy file {path}")) from None
