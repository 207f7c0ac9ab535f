"""Reading the relay's config file and the secrets it names, failing closed.

Why separate from ``config``: that module is pure; this one touches the file system and
the environment. Every secret is read once at startup through the core's ``read_secret``
(mode checks, size bounds, no secret in a message), and every API key's fingerprint is
checked against its commitment before the relay serves anything.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from assay.core.errors import AssayError, SecretError
from assay.core.secrets import read_secret, resolve_path
from assay.core.strict_yaml import MAX_CONFIG_BYTES
from assay.core.tokens import TokenRecord
from assay.core.trusted_files import read_trusted
from assay.relay import apikeys, conflicts, jws
from assay.relay.config import RelayConfig, aggregate_sources, config_error, parse_config
from assay.relay.conflicts import TableKey
from assay.relay.pgread import PgBinding, bind
from assay.relay.population import SourceIdentity, population_problems
from assay.relay.snapshot import TableState

PgBindings = dict[tuple[str, str], PgBinding]


@dataclass(frozen=True)
class LoadedConfig:
    config: RelayConfig
    base: Path
    source: Path

    def path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.base / p


@dataclass(frozen=True)
class RelaySecrets:
    audit_key: bytes
    api_keys: tuple[TokenRecord, ...]
    signing_key: Ed25519PrivateKey | None
    #: (dataset, table) to its Postgres source with the DSN read and checked.
    pg: PgBindings = field(default_factory=dict)


def load_config(path: Path) -> LoadedConfig:
    text = read_trusted(path, max_bytes=MAX_CONFIG_BYTES)  # modes checked like the registry's
    config = parse_config(text, source=str(path))
    loaded = LoadedConfig(config, path.resolve().parent, path)
    problems = population_problems(
        [(where, f"{ds}.{table}", file_identity(loaded.path(src)))
         for where, ds, table, src in _aggregated(loaded)]
    )  # fmt: skip
    problems += conflicts.problems(config, same_file(loaded))
    if problems:
        raise config_error(str(path), problems)
    return loaded


def same_file(loaded: LoadedConfig) -> Callable[[TableKey, TableKey], str | None]:
    """Whether two tables are one population by what the config and the file system say:
    one table, one spelling of a path or of a database source, or one file
    (``file_identity``); the population check of their contents comes once they load."""
    tables = {(ds.id, t.id): t for ds in loaded.config.datasets for t in ds.tables}
    identity: dict[TableKey, SourceIdentity] = {}

    def ident(key: TableKey, path: str) -> SourceIdentity:
        if key not in identity:
            identity[key] = file_identity(loaded.path(path))
        return identity[key]

    def same(a: TableKey, b: TableKey) -> str | None:
        if a == b:
            return f"the aggregate's own table {a[0]}.{a[1]}"
        if a not in tables or b not in tables:
            return None
        src_a, src_b = tables[a].source, tables[b].source
        if src_a.path is None or src_b.path is None:
            # A database source has no file: one spelling (DSN ref and relation or query)
            # is one source here; the relation the server names is compared once read.
            if src_a.spelling() != src_b.spelling():
                return None
            return f"{b[0]}.{b[1]}, the same database source as the aggregate's table {a[0]}.{a[1]}"
        pa_, pb = (posixpath.normpath(str(loaded.path(p))) for p in (src_a.path, src_b.path))
        if pa_ == pb or ident(a, src_a.path).same_population(ident(b, src_b.path)) is not None:
            return f"{b[0]}.{b[1]}, the same file as the aggregate's table {a[0]}.{a[1]}"
        return None

    return same


def _aggregated(loaded: LoadedConfig) -> list[tuple[str, str, str, str]]:
    tables = {(ds.id, t.id): t for ds in loaded.config.datasets for t in ds.tables}
    return [
        (where, ds, table, path)
        for where, ds, table in aggregate_sources(loaded.config)
        if (ds, table) in tables and (path := tables[(ds, table)].source.path) is not None
    ]  # a database source has no file: its identity is known once it is read


def file_identity(path: Path) -> SourceIdentity:
    """Before any source is read: the file a path resolves to, so that another spelling,
    a symlink or a hard link of an aggregated source is refused even by ``--static``."""
    real = os.path.realpath(path)
    try:
        info = os.stat(real)
    except OSError:
        return SourceIdentity(real_path=real)  # not there yet: the load will say so
    return SourceIdentity(file=(info.st_dev, info.st_ino), real_path=real)


def load_secrets(loaded: LoadedConfig) -> RelaySecrets:
    """Audit key, API-key fingerprints (checked against commitments) and signing key."""
    cfg, base = loaded.config, loaded.base
    audit_key = read_secret(cfg.audit.hmac_key, base=base)
    records: list[TokenRecord] = []
    for i, key in enumerate(cfg.auth.api_keys):
        where = f"auth.api_keys[{i}]"
        try:
            fp = read_secret(key.fingerprint, base=base, min_bytes=1).decode()
        except SecretError as exc:
            raise SecretError(f"{where}.fingerprint: {exc.detail}", path=where) from None
        except UnicodeDecodeError:
            raise SecretError(f"{where}.fingerprint: not text", path=where) from None
        apikeys.check(key.id, fp, key.commitment, where=where)
        records.append(TokenRecord(id=key.id, fingerprint=fp, scopes=frozenset(key.scopes)))
    signing: Ed25519PrivateKey | None = None
    if cfg.instance.answer_signing is not None:
        raw = read_secret(cfg.instance.answer_signing.key, base=base)
        signing = jws.load_private_key(raw)
    return RelaySecrets(audit_key, tuple(records), signing, pg_bindings(loaded))


def pg_bindings(loaded: LoadedConfig) -> PgBindings:
    """Every Postgres source's DSN, read from its secret ref and held to the TLS policy
    (``pgsource.check_dsn``); a refusal names the table and the ref, never the value."""
    out: PgBindings = {}
    for i, ds in enumerate(loaded.config.datasets):
        for j, table in enumerate(ds.tables):
            src = table.source.postgres
            if src is None:
                continue
            where = f"datasets[{i}].tables[{j}].source.postgres.dsn"
            try:
                dsn = read_secret(src.dsn, base=loaded.base, min_bytes=1).decode()
            except SecretError as exc:
                raise SecretError(f"{where}: {exc.detail}", path=where) from None
            except UnicodeDecodeError:
                raise SecretError(f"{where}: {src.dsn.describe()} is not text") from None
            try:
                out[(ds.id, table.id)] = bind(src, dsn)
            except AssayError as exc:
                raise type(exc)(f"{where}: {exc.detail}", path=where) from None
    return out


def token_path(loaded: LoadedConfig) -> Path | None:
    ref = loaded.config.auth.token_file
    if ref is None:
        return None
    path = resolve_path(ref, base=loaded.base)
    if path is None:
        raise SecretError("auth.token_file must be a file or a credential, not an env variable")
    return path


def population_readers(loaded: LoadedConfig) -> dict[tuple[str, str], tuple[TableKey, ...]]:
    """Per aggregate, the entities over its table or file (``conflicts.readers``), every
    entity over a live table (it keeps no rows, so nothing can show it is not the
    aggregate's population), and, for an aggregate over a database, every entity over
    any database source: a bearer token that reads one is refused the aggregate, as an
    API key with the same scopes is refused at startup (fail closed)."""
    pg = {(ds.id, t.id): t.source.postgres.mode for ds in loaded.config.datasets
          for t in ds.tables if t.source.postgres is not None}  # fmt: skip
    by_config = same_file(loaded)

    def same(a: TableKey, b: TableKey) -> str | None:
        if a != b and pg.get(b) == "live":
            return f"{b[0]}.{b[1]}, a live table whose rows cannot be compared"
        if a != b and a in pg and b in pg:
            # Two spellings (a table and a query, another DSN ref, a replica) can be one
            # relation, and a request has no rows to compare: fail closed between any two
            # database sources, as the content check does for API keys once they load.
            return f"{b[0]}.{b[1]}, a database source the aggregate's {a[0]}.{a[1]} may share"
        return by_config(a, b)

    return conflicts.readers(loaded.config, same)


def table_states(loaded: LoadedConfig, pg: PgBindings | None = None) -> list[TableState]:
    """Every table's state; a Postgres table takes its binding from ``pg`` (the secrets)."""
    cfg = loaded.config
    pg = pg or {}
    by_table: dict[tuple[str, str], list[str]] = {}
    for where, ds_id, table_id in aggregate_sources(cfg):
        by_table.setdefault((ds_id, table_id), []).append(where)
    # API keys whose aggregate and readable tables are two files: judged by content.
    guards: dict[TableKey, list[conflicts.Conflict]] = {}
    for c in conflicts.undecided(cfg, same_file(loaded)):
        guards.setdefault(c.aggregate_table, []).append(c)
        guards.setdefault(c.entity_table, []).append(c)
    states: list[TableState] = []
    for ds in cfg.datasets:
        for table in ds.tables:
            cap = min(table.max_bytes or cfg.server.max_source_bytes, cfg.server.max_source_bytes)
            path = table.source.path
            binding = pg.get((ds.id, table.id))
            if table.source.postgres is not None and binding is None:
                raise SecretError(f"{ds.id}.{table.id}: its postgres DSN was not loaded")
            states.append(
                TableState(
                    ds.id, table, None if path is None else loaded.path(path), cap,
                    aggregated_by=tuple(by_table.get((ds.id, table.id), ())), pg=binding,
                    guards=tuple(guards.get((ds.id, table.id), ())),
                )
            )  # fmt: skip
    return states
