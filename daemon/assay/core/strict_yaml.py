"""A YAML loader that refuses duplicate keys and anything but plain data.

Why: PyYAML's ``safe_load`` silently keeps the last of two duplicate keys, so a config
that says ``max_bytes`` twice would quietly mean something its author did not read.
Pure: takes text, returns plain values, raises ``ConfigError``.
"""

from __future__ import annotations

from typing import Any

import yaml

from assay.core.errors import ConfigError

MAX_CONFIG_BYTES = 4 * 1024 * 1024


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            line = key_node.start_mark.line + 1
            raise ConfigError(f"duplicate key {key!r} at line {line}", path=str(key))
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def load_yaml(text: str | bytes, *, source: str = "<config>") -> Any:
    """Parse one YAML document strictly; bounded in size before parsing."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: config larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - strict SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.detail}", **exc.extra) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
