"""The registry config's ``trust:`` section: where and how the TUF repository is published.

Absent, the feature is off: configs written before it existed name no keys, and turning
it on silently would stop their daemons at startup. ``assay init`` and the packaged
config write the section, so new deployments publish. Pure.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from assay.core.schema import SecretRef, Strict

HOUR = 3600
DAY = 24 * HOUR


class TrustSection(Strict):
    enabled: bool = True
    #: Where consumers read the repository (under systemd the RuntimeDirectory
    #: /run/assay-trust, 0755). Only the daemon writes it.
    publish_dir: str = "run/trust"
    #: The daemon's own, private record of the versions it has used: the authority that
    #: keeps versions increasing when ``publish_dir`` is a tmpfs that a reboot empties.
    state_dir: str = "state/trust"
    #: ``N.root.json`` for every root version, ``1.root.json`` the one consumers pin.
    #: Written by ``assay init`` (or ``assay-system init``) with the root key, which the
    #: daemon never holds.
    root_dir: str = "trust/root"
    #: The online key that signs targets, snapshot and timestamp (Ed25519, PKCS#8 PEM).
    online_key: SecretRef
    timestamp_expiry_seconds: int = Field(default=HOUR, ge=60, le=7 * DAY)
    refresh_interval_seconds: int = Field(default=15 * 60, ge=1, le=DAY)
    snapshot_expiry_seconds: int = Field(default=7 * DAY, ge=HOUR, le=365 * DAY)
    targets_expiry_seconds: int = Field(default=7 * DAY, ge=HOUR, le=365 * DAY)
    #: Older ``N.snapshot.json`` / ``N.targets.json`` kept, so a reader that read the
    #: previous timestamp still finds the files it names.
    keep_versions: int = Field(default=16, ge=2, le=1024)

    @model_validator(mode="after")
    def _refresh_well_inside_expiry(self) -> TrustSection:
        # One failed refresh must not let the timestamp lapse: two intervals fit.
        if self.refresh_interval_seconds * 2 > self.timestamp_expiry_seconds:
            raise ValueError(
                "refresh_interval_seconds must be at most half of timestamp_expiry_seconds"
            )
        for role in ("snapshot", "targets"):
            if getattr(self, f"{role}_expiry_seconds") < self.timestamp_expiry_seconds:
                raise ValueError(f"{role}_expiry_seconds must be >= timestamp_expiry_seconds")
        return self
