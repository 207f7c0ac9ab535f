"""Config attacks and mistakes: every problem is refused and named by its dotted path."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from assay.core.errors import ConfigError
from assay.relay.config import RelayServerConfig, parse_config
from tests.relay.conftest import EXAMPLE, example_doc


def _refused(doc: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(doc), source="relay.yaml")
    return info.value


def _paths(err: ConfigError) -> list[str]:
    return list(err.extra.get("paths", [err.extra.get("path")]))


def test_example_config_is_valid_as_shipped() -> None:
    cfg = parse_config((EXAMPLE / "relay.yaml").read_bytes(), source="relay.yaml")
    assert cfg.server.bind == "127.0.0.1:8480"
    assert [d.id for d in cfg.datasets] == ["civil"]


def test_relay_default_bind_is_its_own_port_on_loopback() -> None:
    assert RelayServerConfig().bind == "127.0.0.1:8480"
    with pytest.raises(ValueError, match="not loopback"):
        RelayServerConfig(bind="0.0.0.0:8480")


def test_unknown_nested_key_is_named_by_its_path() -> None:
    doc = example_doc()
    doc["datasets"][0]["entities"][0]["fields"][0]["colour"] = "red"
    err = _refused(doc)
    assert "datasets[0].entities[0].fields[0].colour" in _paths(err)
    assert "unknown key" in err.detail


def test_unknown_top_level_block_is_refused() -> None:
    doc = example_doc()
    doc["adminz"] = {"enabled": True}  # ``admin`` is a section now (the admin listener)
    assert "adminz" in _paths(_refused(doc))
    doc = example_doc()
    doc["admin"] = {"enabled": True}  # and a section refuses keys it does not know
    assert "admin.enabled" in _paths(_refused(doc))


def test_duplicate_yaml_key_is_refused_not_last_wins() -> None:
    text = (
        (EXAMPLE / "relay.yaml")
        .read_text()
        .replace("  max_filters: 20\n", "  max_filters: 20\n  max_filters: 64\n")
    )
    with pytest.raises(ConfigError, match="duplicate key 'max_filters'"):
        parse_config(text, source="relay.yaml")


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d["entities"][0].update(table="nope"), "datasets[0].entities[0].table"),
        (
            lambda d: d["entities"][0]["fields"][0].update({"from": "shoe_size"}),
            "datasets[0].entities[0].fields[0].from",
        ),
        (
            lambda d: d["entities"][0]["allowed_filters"][0].update(field="salary"),
            "datasets[0].entities[0].allowed_filters[0].field",
        ),
        (
            lambda d: d["entities"][0].update(required_filters=["enrolled"]),
            "datasets[0].entities[0].required_filters[0]",
        ),
        (
            lambda d: d["aggregates"][0].update(source_entity="ghost"),
            "datasets[0].aggregates[0].source_entity",
        ),
        (
            lambda d: d["aggregates"][0]["dimensions"].append("national_id"),
            "datasets[0].aggregates[0].dimensions[2]",
        ),
        (
            lambda d: d["aggregates"][0]["indicators"].append(
                {"id": "bad", "function": "sum", "field": "sex"}
            ),
            "datasets[0].aggregates[0].indicators[3].field",
        ),
        (
            lambda d: d["tables"][0].update(primary_key="row_number"),
            "datasets[0].tables[0].primary_key",
        ),
        (
            lambda d: d["tables"][0]["source"].update(path="people.ods"),
            "datasets[0].tables[0].source.format",
        ),
        (
            lambda d: d["tables"][0]["source"].update(path="people.xlsx"),
            "datasets[0].tables[0].source.xlsx",
        ),
        (
            lambda d: d["tables"][0]["source"].update(xlsx={"sheet": "People"}),
            "datasets[0].tables[0].source.xlsx",
        ),
        (
            lambda d: d["entities"][1]["allowed_filters"].append(
                {"field": "municipality", "ops": ["eq"]}
            ),
            "datasets[0].entities[1].allowed_filters[4].field",
        ),
    ],
    ids=[
        "entity-to-missing-table",
        "field-to-missing-column",
        "filter-to-missing-field",
        "required-filter-not-allowed",
        "aggregate-to-missing-entity",
        "dimension-not-in-entity",
        "sum-over-text",
        "primary-key-not-in-schema",
        "unknown-source-format",
        "xlsx-without-its-sheet",
        "xlsx-options-on-a-csv-source",
        "duplicate-filter",
    ],
)
def test_broken_cross_reference_is_named_by_its_path(mutate: Any, path: str) -> None:
    doc = example_doc()
    mutate(doc["datasets"][0])
    assert path in _paths(_refused(doc))


def test_every_broken_reference_is_reported_at_once() -> None:
    doc = example_doc()
    ds = doc["datasets"][0]
    ds["entities"][0].update(table="nope")
    ds["aggregates"][0].update(source_entity="ghost")
    paths = _paths(_refused(doc))
    assert "datasets[0].entities[0].table" in paths
    assert "datasets[0].aggregates[0].source_entity" in paths


def test_aggregate_filter_on_a_non_dimension_is_refused() -> None:
    doc = example_doc()
    doc["datasets"][0]["aggregates"][0]["allowed_filters"].append(
        {"field": "monthly_income", "ops": ["gte"]}
    )
    err = _refused(doc)
    assert "datasets[0].aggregates[0].allowed_filters[1].field" in _paths(err)
    assert "differencing" in err.detail


def test_second_grouping_of_one_population_is_refused() -> None:
    doc = example_doc()
    ds = doc["datasets"][0]
    coarse = copy.deepcopy(ds["aggregates"][0])
    coarse.update(id="people_by_municipality_only", dimensions=["municipality"])
    ds["aggregates"].append(coarse)
    err = _refused(doc)
    assert "datasets[0].aggregates[1].source_entity" in _paths(err)


def test_api_key_scope_no_dataset_uses_is_refused() -> None:
    doc = example_doc()
    doc["auth"]["api_keys"][0]["scopes"].append("civil:admin")
    assert "auth.api_keys[0].scopes[2]" in _paths(_refused(doc))


def test_same_scope_for_read_and_metadata_is_refused() -> None:
    doc = example_doc()
    doc["datasets"][0]["access"]["read_scope"] = "civil:metadata"
    assert "datasets[0].access" in _paths(_refused(doc))


def test_default_limit_over_max_limit_names_the_entity() -> None:
    doc = example_doc()
    doc["datasets"][0]["entities"][0]["default_limit"] = 500
    assert "datasets[0].entities[0]" in _paths(_refused(doc))


def test_range_ops_on_a_boolean_are_refused() -> None:
    doc = example_doc()
    doc["datasets"][0]["entities"][2]["allowed_filters"].append(
        {"field": "enrolled", "ops": ["gte"]}
    )
    assert "datasets[0].entities[2].allowed_filters[1].ops" in _paths(_refused(doc))


def test_malformed_commitment_is_refused_by_shape() -> None:
    doc = example_doc()
    doc["auth"]["api_keys"][0]["commitment"] = "sha256:abc"
    assert "auth.api_keys[0].commitment" in _paths(_refused(doc))


def test_no_credential_source_at_all_is_refused() -> None:
    doc = example_doc()
    doc["auth"] = {}
    assert "auth" in _paths(_refused(doc))
