"""Assembling a relay from a loaded config: snapshots, service, authenticator, app.

Why its own module: the daemon and the tests build the relay the same way, and the tests
must not depend on the process-level pieces (sockets, signals, the audit writer task).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quart_trio import QuartTrio

from assay.core.authn import Authenticator
from assay.core.web import AuditSink
from assay.relay import apikeys
from assay.relay.app import audit_route, create_app
from assay.relay.budgetstore import BudgetStore
from assay.relay.cursor import derive_key
from assay.relay.oidc import OidcVerifier, discover
from assay.relay.service import Relay
from assay.relay.settings import (
    LoadedConfig,
    RelaySecrets,
    population_readers,
    table_states,
    token_path,
)
from assay.relay.snapshot import SnapshotStore, snapshot_tagger

#: Used when no token file is configured: never loaded, so it holds no tokens.
NO_TOKEN_FILE = Path("/nonexistent/assay-relay-no-token-file")


@dataclass
class Assembled:
    relay: Relay
    store: SnapshotStore
    authenticator: Authenticator
    app: QuartTrio
    has_token_file: bool
    #: Spent row budgets (None when no entity has one); close it on the way out.
    budgets: BudgetStore | None = None
    #: The OIDC verifier in ``auth.mode: oidc``.
    oidc: OidcVerifier | None = None

    @property
    def admin_authenticator(self) -> Authenticator:
        """The admin listener's gate: the relay's own credentials only (token file, API
        keys). An identity provider's token never reaches it, whatever scopes it names
        (``oidc_claims`` drops ``admin:*`` as well: two locks, either one holds), so in
        ``auth.mode: oidc``, which has no local credential, every admin request is 401."""
        return Authenticator(NO_TOKEN_FILE) if self.oidc is not None else self.authenticator

    def audit_route(self) -> Callable[[str, str], str]:
        """(method, path) to the audit ``route``, for the 431 refused before routing."""
        return audit_route(self.app.url_map, self.relay.redactor)

    def close(self) -> None:
        """Blocking: the budget store and the live tables' idle database sessions."""
        self.store.close()
        if self.budgets is not None:
            self.budgets.close()


def tables_check(store: SnapshotStore) -> dict[str, Any]:
    """Ready while every table has a snapshot; a failed reload shows as ``stale``."""
    status = store.status()
    return {
        "ok": all(t["ok"] for t in status.values()),
        "stale": sorted(name for name, t in status.items() if t["stale"]),
        "tables": status,
    }


def budget_store(loaded: LoadedConfig, clock: Callable[[], float]) -> BudgetStore | None:
    """The durable store of spent row budgets, opened (blocking); None if none is set."""
    cfg = loaded.config
    if cfg.row_budgets is None:
        return None
    store = BudgetStore(loaded.path(cfg.row_budgets.state_dir), clock)
    store.open()
    return store


def oidc_verifier(loaded: LoadedConfig, clock: Callable[[], float]) -> OidcVerifier | None:
    """The OIDC verifier in ``auth.mode: oidc`` (blocking: reads the discovery document)."""
    policy = loaded.config.auth.oidc
    if loaded.config.auth.mode != "oidc" or policy is None:
        return None
    return OidcVerifier(policy, discover(policy), clock=clock)


def authenticator_for(
    loaded: LoadedConfig, secrets: RelaySecrets, verifier: OidcVerifier | None = None
) -> tuple[Authenticator, bool]:
    if verifier is not None:
        # Bearer JWTs only; the sync path (health routes) uses the keys already held.
        return Authenticator(NO_TOKEN_FILE, extra={"bearer": verifier.verify_cached}), False
    verify = apikeys.verifier(secrets.api_keys)
    path = token_path(loaded)
    authn = Authenticator(path or NO_TOKEN_FILE, extra={"x-api-key": verify, "bearer": verify})
    return authn, path is not None


def assemble(
    loaded: LoadedConfig,
    secrets: RelaySecrets,
    *,
    audit: AuditSink,
    readiness: Callable[[SnapshotStore], dict[str, Any]] | None = None,
    clock: Callable[[], float] | None = None,
) -> Assembled:
    """Blocking (loads every table and the token file): run it in a worker thread."""
    now = time.time if clock is None else clock
    # First: a discovery that fails stops startup before any table or store is opened.
    verifier = oidc_verifier(loaded, now)
    tag = snapshot_tagger(derive_key(secrets.audit_key, "snapshot-tag"))
    store = SnapshotStore(table_states(loaded, secrets.pg), tag=tag)
    store.load_all_blocking()
    budgets = budget_store(loaded, now)
    relay = Relay(
        loaded.config,
        store,
        audit_key=secrets.audit_key,
        signing_key=secrets.signing_key,
        clock=now,
        budgets=budgets,
        readers=population_readers(loaded),
    )
    authn, has_tokens = authenticator_for(loaded, secrets, verifier)
    if has_tokens:
        authn.load()

    def ready() -> dict[str, Any]:
        return readiness(store) if readiness is not None else {"tables": tables_check(store)}

    app = create_app(
        relay,
        authenticator=authn,
        audit=audit,
        readiness=ready,
        authenticate=verifier.authenticate if verifier is not None else None,
    )
    return Assembled(relay, store, authn, app, has_tokens, budgets, verifier)
