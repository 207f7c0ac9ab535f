"""Assemble and open the repository from the ``trust:`` section: root chain, online key,
directories.

Every mismatch stops startup with a message that names it (``trust.config_invalid``):
a daemon that published metadata its consumers' pinned root refuses would look healthy
while every consumer failed closed. Blocking (reads files); run in a worker thread.
"""

from __future__ import annotations

from pathlib import Path

from assay.trust import metadata
from assay.trust.config import TrustSection
from assay.trust.errors import TrustConfigError
from assay.trust.keys import load_signer
from assay.trust.repository import Repository, read_root_chain


def resolve(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def load_repository(section: TrustSection, *, base: Path) -> Repository:
    root_dir = resolve(base, section.root_dir)
    # Steps ROOT-1..3 (``metadata.check_root_chain``): the chain a client would accept.
    chain = metadata.check_root_chain(read_root_chain(root_dir))
    signer = load_signer(section.online_key, base=base, what="trust.online_key")
    # Step ROOT-4: the online key is the one the latest root names for its roles.
    metadata.check_online_key(chain.latest, signer.public_key)
    repo = Repository(
        publish_dir=resolve(base, section.publish_dir),
        state_dir=resolve(base, section.state_dir),
        roots=chain,
        signer=signer,
        section=section,
    )
    try:
        repo.open()
    except OSError as exc:
        raise TrustConfigError(f"trust directories: {exc.strerror or exc}: "
                               f"{exc.filename or ''}") from None  # fmt: skip
    return repo
