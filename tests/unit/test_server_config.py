"""The connection limits in the shared ``server:`` block: defaults, bounds, shipped configs.

Every config that ships (the package's registry and relay configs, the relay example,
what ``assay init`` writes) must stay valid and get the same limits, on both daemons,
and the limits must reach the connection guard as configured.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from assay.cli.admin import CONFIG_TEMPLATE
from assay.core.connlimits import Limits
from assay.core.errors import ConfigError
from assay.core.schema import ServerConfig, validate
from assay.core.serving import connection_limits
from assay.core.strict_yaml import load_yaml
from assay.registry.config import parse_config as parse_registry
from assay.relay.config import RelayServerConfig
from assay.relay.config import parse_config as parse_relay

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = Limits(max_connections=256, keep_alive=5.0, header_read=10.0, request=60.0)


def shipped() -> dict[str, ServerConfig]:
    init = CONFIG_TEMPLATE.format(bind="127.0.0.1:8470", uid=0)
    return {
        "assay init": parse_registry(init, source=Path("config.yaml")).server,
        "packaging/config.yaml": parse_registry(
            (ROOT / "packaging" / "config.yaml").read_bytes(), source=Path("config.yaml")
        ).server,
        # Its API-key commitments are placeholders the package fills in: its server block.
        "packaging/relay.yaml": validate(
            RelayServerConfig, load_yaml((ROOT / "packaging" / "relay.yaml").read_bytes())["server"]
        ),
        "relay/example": parse_relay(
            (ROOT / "relay" / "example" / "relay.yaml").read_bytes()
        ).server,
    }


@pytest.mark.parametrize("name", list(shipped()))
def test_shipped_configs_stay_valid_and_get_the_default_limits(name: str) -> None:
    assert connection_limits(shipped()[name]) == DEFAULTS


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_connections", 0),
        ("max_connections", 65537),
        ("keep_alive_timeout_seconds", 0),
        ("header_read_timeout_seconds", 0),
        ("header_read_timeout_seconds", 601),
        ("request_timeout_seconds", -1),
        ("request_timeout_seconds", 86_401),
    ],
)
def test_limits_out_of_range_are_refused_by_path(key: str, value: float) -> None:
    with pytest.raises(ConfigError) as info:
        validate(ServerConfig, {key: value}, source="c.yaml")
    assert info.value.extra["path"] == key


def test_configured_limits_reach_the_guard() -> None:
    server = validate(
        ServerConfig,
        {
            "max_connections": 12,
            "keep_alive_timeout_seconds": 1.5,
            "header_read_timeout_seconds": 2,
            "request_timeout_seconds": 3,
        },
    )
    assert connection_limits(server) == Limits(12, 1.5, 2.0, 3.0)
