"""Helpers for the TUF tests: a root and online key, a repository on disk, artifacts,
and a loopback static file server that an attack can make lie."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from assay.registry.model import Artifact
from assay.trust import metadata
from assay.trust.bootstrap import init_trust
from assay.trust.config import TrustSection
from assay.trust.keys import load_signer_file
from assay.trust.metadata import Entry
from assay.trust.repository import Repository, read_root_chain

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def artifact(name: str, seed: int, *, state: str = "trusted", integrity: str = "ok",
             promoted: str = "2030-01-01T00:00:00.000Z") -> Artifact:  # fmt: skip
    data = f"{name}:{seed}".encode()
    return Artifact(
        digest=digest_of(data),
        name=name,
        size=len(data) + 100,
        format="safetensors",
        format_details={},
        metadata={},
        state=state,
        integrity=integrity,
        created_at=promoted,
        updated_at=promoted,
        uploaded_by="alice",
        state_changed_at=promoted,
    )


def entries(*arts: Artifact) -> frozenset[Entry]:
    return metadata.trusted_entries(arts)


@dataclass
class Clock:
    """A settable UTC clock for the repository (and its POSIX view for consumers)."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    ns: int = 0

    def __call__(self) -> datetime:
        return self.now

    def posix(self) -> float:
        return self.now.timestamp()

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def wall_ns(self) -> int:
        self.ns += 1
        return int(self.now.timestamp() * 1e9) + self.ns


@dataclass
class TrustFixture:
    """Keys, root and paths under ``base``; ``repository()`` opens one over them."""

    base: Path
    clock: Clock = field(default_factory=Clock)
    section: TrustSection = field(
        default_factory=lambda: TrustSection(online_key={"file": "secrets/tuf-online.key"})
    )

    def __post_init__(self) -> None:
        secrets = self.base / "secrets"
        secrets.mkdir(parents=True, mode=0o700, exist_ok=True)
        init_trust(secrets / "tuf-root.key", secrets / "tuf-online.key", self.root_dir)

    @property
    def root_dir(self) -> Path:
        return self.base / "trust" / "root"

    @property
    def root_key(self) -> Path:
        return self.base / "secrets" / "tuf-root.key"

    @property
    def online_key(self) -> Path:
        return self.base / "secrets" / "tuf-online.key"

    @property
    def publish_dir(self) -> Path:
        return self.base / "run" / "trust"

    @property
    def state_dir(self) -> Path:
        return self.base / "state" / "trust"

    @property
    def pinned_root(self) -> bytes:
        return (self.root_dir / "1.root.json").read_bytes()

    def repository(self, *, publish_dir: Path | None = None, clock: Clock | None = None,
                   **section: Any) -> Repository:  # fmt: skip
        clock = clock or self.clock
        repo = Repository(
            publish_dir=publish_dir or self.publish_dir,
            state_dir=self.state_dir,
            roots=metadata.check_root_chain(read_root_chain(self.root_dir)),
            signer=load_signer_file(self.online_key, what="online key"),
            section=self.section.model_copy(update=section) if section else self.section,
            clock=clock,
            wall_ns=clock.wall_ns,
        )
        repo.open()
        return repo


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def static_server(
    directory: Path, *, override: Callable[[str], bytes | None] | None = None
) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (an ephemeral port) from a thread; ``override``
    may answer a path with other bytes (the attacks). Yields the base URL; stops it."""

    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            body = override(self.path.lstrip("/")) if override else None
            if body is None:
                super().do_GET()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # A client that stops reading (what a length limit does) is not an error.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(Handler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
