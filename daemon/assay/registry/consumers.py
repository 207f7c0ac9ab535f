"""The consumer socket's rules: its config section, who a peer is, and what it asked.

A local service asks the daemon's Unix socket for a trusted artifact and receives a
read-only fd on it (``assay.registry.handoff``; the wire format is
``assay.consumer.protocol``). Who it is comes from the kernel, not from a secret: the
credentials the kernel attaches to the request message itself (``SCM_CREDENTIALS``: pid,
uid, gid; see ``sender_of``) are mapped to a *consumer principal* declared here in the
config, with its scopes. A bearer token sent in the request works too and then decides
alone.

Pure: values in, a ``Principal`` or a typed refusal out. Group names in the config are
resolved to gids at startup by the daemon (``resolve_groups``'s caller), not here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator, model_validator

from assay.core.errors import BadRequest
from assay.core.schema import Strict
from assay.core.tokens import ID_PATTERN, SCOPE_PATTERN, Principal
from assay.registry.bodies import parse_object
from assay.registry.digests import parse_digest
from assay.registry.validate import check_name

GiB = 1024**3
#: The scope an open needs: the same as fetching the bytes over HTTP.
OPEN_SCOPE = "artifacts:read"
#: Group and user ids are 32-bit; (uid_t)-1 means "none" and never names anyone.
MAX_ID = 2**32 - 2


class ConsumerPrincipal(Strict):
    """Peers that are this principal: any of ``uids``, or any member (primary or
    supplementary) of ``gids`` or of the groups named in ``groups``."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    uids: tuple[int, ...] = ()
    gids: tuple[int, ...] = ()
    groups: tuple[str, ...] = ()
    scopes: tuple[str, ...] = Field(min_length=1)

    @field_validator("uids", "gids")
    @classmethod
    def _ids(cls, values: tuple[int, ...]) -> tuple[int, ...]:
        for value in values:
            if not 0 <= value <= MAX_ID:
                raise ValueError(f"{value} is not a uid or gid")
        return values

    @field_validator("groups")
    @classmethod
    def _group_names(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if not ID_PATTERN.fullmatch(value):
                raise ValueError(f"group {value[:40]!r} is not a group name")
        return values

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if not SCOPE_PATTERN.fullmatch(value):
                raise ValueError(f"scope {value[:40]!r} is not resource:action")
        return values

    @model_validator(mode="after")
    def _names_someone(self) -> ConsumerPrincipal:
        if not (self.uids or self.gids or self.groups):
            raise ValueError("a consumer principal needs uids, gids or groups")
        return self


class ConsumerSection(Strict):
    """``consumer:`` in the registry config. Absent: no socket unless systemd passes one
    (an fd named ``consumer``), and no peer is anyone, so only bearer tokens open."""

    #: Where to listen outside systemd (relative to the config file); None: only a
    #: socket-activated fd. The directories above it must let consumers reach it.
    socket: str | None = None
    #: The socket file's mode: connecting needs write permission on it, so this and
    #: ``socket_group`` are the first gate. Never anything for "others".
    socket_mode: int = Field(default=0o660, ge=0o600, le=0o770)
    #: Group name or gid for the socket file; None: the daemon's own group.
    socket_group: str | int | None = None
    max_connections: int = Field(default=64, ge=1, le=4096)
    #: How long a peer may take to send its request, and to take its answer.
    request_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    #: An object whose file changed since its last full hash is re-hashed on open up
    #: to this size; a larger one is refused and marked (``assay verify`` restores it).
    rehash_max_bytes: int = Field(default=4 * GiB, ge=0)
    principals: tuple[ConsumerPrincipal, ...] = ()

    @field_validator("socket_mode")
    @classmethod
    def _mode(cls, value: int) -> int:
        if value & 0o007 or value & 0o600 != 0o600:
            raise ValueError(f"socket_mode {value:#o}: owner rw, nothing for others (0600/0660)")
        return value

    @field_validator("socket_group")
    @classmethod
    def _group(cls, value: str | int | None) -> str | int | None:
        if isinstance(value, int) and not 0 <= value <= MAX_ID:
            raise ValueError(f"{value} is not a gid")
        if isinstance(value, str) and not ID_PATTERN.fullmatch(value):
            raise ValueError(f"group {value[:40]!r} is not a group name")
        return value

    @model_validator(mode="after")
    def _unique_ids(self) -> ConsumerSection:
        ids = [p.id for p in self.principals]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"principal ids given twice: {', '.join(dupes)}")
        return self


@dataclass(frozen=True)
class Peer:
    """What the kernel says about the process that sent a request."""

    pid: int
    uid: int
    gid: int
    #: Every group it is in (``SO_PEERGROUPS``), the primary one included.
    groups: frozenset[int] = frozenset()
    #: Who called ``connect()``, when that was someone else (``SO_PEERCRED``, frozen at
    #: connect): recorded beside the sender, never used to authorize.
    connected: tuple[int, int, int] | None = None

    def fields(self) -> dict[str, Any]:
        """For the audit record's ``extra`` (ids, never names: no I/O here)."""
        out: dict[str, Any] = {"peer_pid": self.pid, "peer_uid": self.uid, "peer_gid": self.gid}
        if self.connected is not None:
            out["connected_pid"], out["connected_uid"], out["connected_gid"] = self.connected
        return out


#: A message that carried no credentials: nobody (uid -1 never matches a rule).
NOBODY = (0, -1, -1)


def sender_of(sent: tuple[int, int, int] | None, connected: Peer) -> Peer:
    """The peer a request is authorized as: the credentials the kernel attached to *that
    message* (``SCM_CREDENTIALS``, with ``SO_PASSCRED`` on the daemon's socket), not the
    ones frozen at ``connect()``: a connected socket handed to, or kept across a drop to,
    another uid speaks for its sender, not its opener.

    Step SND-1: no credentials on the message is nobody. Step SND-2: ``SCM_CREDENTIALS``
    carries no supplementary groups, so the connect-time ``SO_PEERGROUPS`` count only
    while the sender is the very process that connected, with the same uid and gid;
    otherwise its primary gid alone (fewer groups can only match fewer rules).
    """
    pid, uid, gid = sent if sent is not None else NOBODY
    same = (pid, uid, gid) == (connected.pid, connected.uid, connected.gid)
    if same:
        return connected
    return Peer(pid=pid, uid=uid, gid=gid, groups=frozenset({gid}) if gid >= 0 else frozenset(),
                connected=(connected.pid, connected.uid, connected.gid))  # fmt: skip


@dataclass(frozen=True)
class PeerRule:
    """A ``ConsumerPrincipal`` with its group names already resolved to gids."""

    id: str
    uids: frozenset[int]
    gids: frozenset[int]
    scopes: frozenset[str]


def rules(section: ConsumerSection, group_ids: Mapping[str, int]) -> tuple[PeerRule, ...]:
    """The principals with ``groups`` replaced by gids (``group_ids`` must hold each)."""
    return tuple(
        PeerRule(
            id=p.id,
            uids=frozenset(p.uids),
            gids=frozenset(p.gids) | {group_ids[g] for g in p.groups},
            scopes=frozenset(p.scopes),
        )
        for p in section.principals
    )


def principal_for(peer: Peer, peer_rules: Sequence[PeerRule]) -> Principal | None:
    """The first rule, in config order, that names the peer's uid or one of its groups.

    Step PEER-1: uid -1 (no credentials) is nobody. Step PEER-2: first match wins, so an
    operator can put a narrow rule for one uid before a broad one for a group.
    """
    if peer.uid < 0 or peer.uid > MAX_ID:
        return None
    groups = peer.groups | {peer.gid}
    for rule in peer_rules:
        if peer.uid in rule.uids or rule.gids & groups:
            return Principal(id=rule.id, scopes=rule.scopes, auth_mode="peer")
    return None


@dataclass(frozen=True)
class OpenRequest:
    """One request: a trusted name or a digest, and an optional bearer token."""

    name: str | None
    digest: str | None
    token: str | None

    @property
    def target(self) -> str:
        return self.digest or f"name:{self.name}"


def parse_request(raw: bytes, *, max_bytes: int) -> OpenRequest:
    """The request's JSON object: ``{"name": N}`` or ``{"digest": D}``, maybe ``"token"``.

    Steps REQ-1..3: bounded, then strict JSON (``assay.registry.bodies``: one parser
    decides), then exactly one of name or digest, each checked by its own validator.
    """
    # Step REQ-0 (empty): a zero-length message is a request that arrived (the socket
    # layer tells it from a hang-up), and is refused like any malformed one.
    if not raw:
        raise BadRequest("empty request: send a JSON object", code="request.empty")
    # Step REQ-1 (bound): the message was read into a buffer one byte larger.
    if len(raw) > max_bytes:
        raise BadRequest(f"request larger than {max_bytes} bytes", code="request.too_large")
    # Step REQ-2 (syntax): strict JSON, known fields only.
    body = parse_object(raw, allowed=frozenset({"v", "name", "digest", "token"}))
    if body.get("v", 1) != 1:
        raise BadRequest("unsupported request version (this daemon speaks v1)")
    # Step REQ-3 (shape): one target, strings only.
    name, digest, token = body.get("name"), body.get("digest"), body.get("token")
    if (name is None) == (digest is None):
        raise BadRequest("give exactly one of name or digest")
    for key, value in (("name", name), ("digest", digest), ("token", token)):
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"{key} must be a string")
    return OpenRequest(
        name=check_name(name) if name is not None else None,
        digest=parse_digest(digest) if digest is not None else None,
        token=token,
    )
