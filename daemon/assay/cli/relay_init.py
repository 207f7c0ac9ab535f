"""``assay relay init DIR``: a complete, working example relay over synthetic data.

Why a command: the example needs data, an audit key, two signing keys, two API keys
whose commitments go into the config and whose fingerprints go into a secret store, and
a value of a sensitive filter to ask for; by hand that was eight steps and a CSV to read.
This writes all of it (secrets 0600 in a 0700 directory; never real data), checks the
result the way startup would (``relay check-config``), and prints the two commands
that follow. ``docs/relay.md``'s quick start is these commands, run by a test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from string import Template
from typing import Any

from assay.core.errors import ConfigError

#: The default address, unless ``$ASSAY_RELAY_BIND`` names another (the quick-start test
#: sets it to a free port; a person need not).
DEFAULT_BIND = "127.0.0.1:8480"
BIND_ENV = "ASSAY_RELAY_BIND"
#: The client's side of the example, sourced by a shell (``. DIR/relay.env``).
ENV_FILE = "relay.env"
CONFIG_FILE = "relay.yaml"
#: The two keys of the example config and their scopes (which the template lists).
KEY_IDS = ("caseworker", "statistics")

TEMPLATE = Template(
    """\
# assay relay: the example deployment made by `assay relay init`. Synthetic data only.
# Secrets never sit in this file: it names the files that hold them (mode 0600). Each
# API key's commitment binds its id to the fingerprint in secrets/; the raw keys are in
# relay.env, for the client only. The same config as relay/example/relay.yaml.
instance:
  id: example-relay
  environment: development
  owner: Example Ministry of Synthetic Affairs
  answer_signing:
    key: {file: secrets/answer-signing.key}
    key_id: example-2025
    ttl_seconds: 300

server:
  bind: $bind
  openapi_requires_auth: true
  max_query_bytes: 4096
  max_filters: 20
  max_in_values: 100
  max_source_bytes: 268435456

catalog:
  title: Example synthetic registries
  publisher: Example Ministry of Synthetic Affairs
  description: People and households generated from a seeded PRNG. Not real data.

auth:
  api_keys:
    - id: caseworker
      fingerprint: {file: secrets/caseworker.fingerprint}
      commitment: "$caseworker_commitment"
      scopes: [civil:metadata, civil:read]
    - id: statistics
      fingerprint: {file: secrets/statistics.fingerprint}
      commitment: "$statistics_commitment"
      scopes: [civil:metadata, civil:aggregate]

audit:
  dir: state/audit
  hmac_key: {file: secrets/audit-hmac.key}
  # Signed checkpoints let `assay audit verify` detect truncation and rollback too.
  signing_key: {file: secrets/audit-signing.key}
  log_id: relay

# At most `rows` rows per credential and entity in each fixed window: no key pages through
# a whole entity. Spent budgets are kept here durably, so a restart does not reset one.
row_budgets:
  state_dir: state/row-budgets
  default: {rows: 5000, window_seconds: 86400}

datasets:
  - id: civil
    title: Synthetic civil and benefits registry
    description: Enrolment of people in a benefit programme, grouped in households.
    owner: Example Ministry of Synthetic Affairs
    sensitivity: personal
    access_rights: restricted
    update_frequency: daily
    access:
      metadata_scope: civil:metadata
      read_scope: civil:read
      aggregate_scope: civil:aggregate
    tables:
      - id: people
        source: {path: data/people.parquet}
        primary_key: person_id
        refresh: {mode: mtime, interval_seconds: 5}
        schema:
          - {name: person_id, type: string, nullable: false}
          - {name: national_id, type: string, nullable: false}
          - {name: household_id, type: string, nullable: false}
          - {name: given_name, type: string}
          - {name: birth_date, type: date}
          - {name: sex, type: string}
          - {name: municipality, type: string, nullable: false}
          - {name: enrolled, type: boolean, nullable: false}
          - {name: enrolled_on, type: date}
          - {name: monthly_income, type: number}
          - {name: updated_at, type: timestamp}
          - {name: case_note, type: string}
      - id: households
        source: {path: data/households.csv}
        primary_key: household_id
        refresh: {mode: mtime, interval_seconds: 5}
        schema:
          - {name: household_id, type: string, nullable: false}
          - {name: municipality, type: string, nullable: false}
          - {name: size, type: integer, nullable: false}
          - {name: status, type: string, nullable: false}
          - {name: head_person_id, type: string}
          - {name: updated_at, type: timestamp}
    entities:
      # "Is this person enrolled?" Answered by national id, never by browsing.
      - name: person
        title: Person
        table: people
        fields:
          - {name: id, from: person_id}
          - {name: national_id, sensitive: true}
          - {name: household, from: household_id}
          - {name: enrolled}
          - {name: enrolled_on}
          - {name: municipality}
        allowed_filters:
          - {field: national_id, ops: [eq, in]}
          - {field: household, ops: [eq]}
          - {field: enrolled_on, ops: [gte, lte, between]}
        required_filters: [national_id]
        default_limit: 10
        max_limit: 50
        require_purpose_header: true
        row_budget: {rows: 500, window_seconds: 86400}
      # "What is this household's status?"
      - name: household
        title: Household
        table: households
        fields:
          - {name: id, from: household_id}
          - {name: municipality}
          - {name: size}
          - {name: status}
        allowed_filters:
          - {field: id, ops: [eq]}  # so /records/{id} answers (the key is exposed, filterable)
          - {field: municipality, ops: [eq, in]}
          - {field: status, ops: [eq, in]}
          - {field: size, ops: [eq, gte, lte, between]}
        default_limit: 50
        max_limit: 200
      # The aggregate's view: no identifiers, so its dimensions cannot single anyone out.
      - name: resident
        title: Resident (aggregate view)
        table: people
        fields:
          - {name: municipality}
          - {name: sex}
          - {name: enrolled}
          - {name: monthly_income}
        allowed_filters:
          - {field: municipality, ops: [eq, in]}
        required_filters: [municipality]
        default_limit: 20
        max_limit: 100
    aggregates:
      # "How many people are in each municipality?"
      - id: people_by_municipality
        title: People by municipality and sex
        source_entity: resident
        dimensions: [municipality, sex]
        indicators:
          - {id: people, function: count}
          - {id: people_with_income, function: count, field: monthly_income}
          - {id: mean_monthly_income, function: avg, field: monthly_income}
        allowed_filters:
          - {field: municipality, ops: [eq, in]}
        disclosure_control:
          min_group_size: 5
          suppression: omit
"""
)


def default_bind() -> str:
    return os.environ.get(BIND_ENV) or DEFAULT_BIND


def _empty_or_missing(directory: Path) -> bool:
    """Refuse anything but a new or empty directory (a deployment is never merged);
    True if it exists (empty)."""
    import stat

    from assay.cli.errors import OutputUnwritable
    from assay.cli.paths import show

    try:
        mode: int | None = os.lstat(directory).st_mode
        entries = None
        if stat.S_ISDIR(mode or 0):
            with os.scandir(directory) as it:
                entries = next(it, None)
    except (FileNotFoundError, NotADirectoryError):
        mode, entries = None, None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)[:200]
        raise OutputUnwritable(f"cannot write into DIR {show(directory)}: {reason}") from None
    if mode is not None and not stat.S_ISDIR(mode):
        raise OutputUnwritable(f"cannot write into DIR {show(directory)}: not a directory")
    if entries is not None:
        raise ConfigError(
            f"{show(directory)} is not empty; `assay relay init` makes a new example in a "
            "new or empty directory"
        )
    return mode is not None


def init_relay(
    directory: Path, *, bind: str, people: int, seed: int | None = None
) -> dict[str, Any]:
    """Write the example deployment into ``directory`` (missing or empty) and check it.

    All or nothing: everything is written into a private (0700, random name) staging
    directory and checked there as startup would; only a checked deployment is moved
    into place, by ``rename(2)``: the staging directory itself onto a missing
    ``directory`` (beside it), or its entries into an existing empty one (inside it,
    so ``relay init .`` works); then the directory is fsynced. A refusal (a bad
    ``--bind``, a full disk) removes the staging directory and leaves ``directory`` as
    it was, absent or empty, so the retry is not refused as "not empty".
    """
    import secrets
    import shutil

    from assay.cli.options import init_bind
    from assay.cli.paths import output_dir, written
    from assay.core.atomic import fsync_dir

    # Before anything is written: a bind the config it writes accepts (from --bind or
    # $ASSAY_RELAY_BIND, which argparse never saw).
    bind = init_bind(bind, source=f"--bind (or ${BIND_ENV})")
    existed = _empty_or_missing(directory)
    parent = directory if existed else output_dir(Path(os.path.abspath(directory)).parent,
                                                   what="DIR")  # fmt: skip
    stage = parent / f".{directory.name or 'relay'}.init-{secrets.token_hex(8)}"
    label = f"DIR {directory}"
    try:
        stage.mkdir(mode=0o700)
    except OSError as exc:
        raise written(exc, label) from None
    placed = False
    try:
        out = _write_example(stage, directory, bind=bind, people=people, seed=seed)
        try:
            if existed:
                directory.chmod(0o700)  # the relay trusts no config others may replace
                for entry in sorted(os.listdir(stage)):
                    os.rename(stage / entry, directory / entry)
                stage.rmdir()
                fsync_dir(directory)
            else:
                os.rename(stage, directory)
                fsync_dir(parent)
            placed = True
        except OSError as exc:
            raise written(exc, label) from None
    finally:
        if not placed:
            shutil.rmtree(stage, ignore_errors=True)
    return out


def _write_example(
    stage: Path, directory: Path, *, bind: str, people: int, seed: int | None
) -> dict[str, Any]:
    """The example in ``stage``, checked; paths in what it says name ``directory``."""
    import secrets

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from assay.cli.relay_cmd import check_config
    from assay.core.atomic import atomic_write
    from assay.core.audit.keys import generate_signing_key
    from assay.core.trusted_files import check_ancestors
    from assay.relay import apikeys, jws, synthetic

    # The relay refuses a config whose directory others may write (trusted_files).
    check_ancestors(stage / CONFIG_FILE)
    secrets_dir = stage / "secrets"
    for d in (secrets_dir, stage / "state"):
        d.mkdir(mode=0o700)

    # 1. Synthetic data (seeded: the same seed gives the same bytes).
    people_table, households = synthetic.generate(people, seed or synthetic.DEFAULT_SEED)
    synthetic.write_tables(stage / "data", people_table, households)
    enrolled = people_table.column("enrolled").to_pylist()
    ids = people_table.column("national_id").to_pylist()
    sample_id = next((i for i, e in zip(ids, enrolled, strict=True) if e), ids[0])
    sample_household = households.column("household_id")[0].as_py()

    # 2. Secrets, each 0600: the audit chain's key, its checkpoint signing key, the
    #    answer-signing key, and each API key's fingerprint.
    atomic_write(secrets_dir / "audit-hmac.key", (secrets.token_hex(32) + "\n").encode())
    generate_signing_key(secrets_dir / "audit-signing.key", secrets_dir / "audit-signing.pub")
    answer_key = Ed25519PrivateKey.generate()
    atomic_write(secrets_dir / "answer-signing.key", jws.private_pem(answer_key))
    atomic_write(secrets_dir / "answer-signing.key.pub", jws.public_pem(answer_key), mode=0o644)
    keys = {key_id: apikeys.new_key(key_id) for key_id in KEY_IDS}
    for key_id, made in keys.items():
        atomic_write(secrets_dir / f"{key_id}.fingerprint", (made["fingerprint"] + "\n").encode())

    # 3. The config, with each key's commitment filled in.
    config = stage / CONFIG_FILE
    text = TEMPLATE.substitute(
        bind=json.dumps(bind),  # quoted: an IPv6 "[::1]:8480" is a YAML flow list bare
        **{f"{key_id}_commitment": made["commitment"] for key_id, made in keys.items()},
    )
    atomic_write(config, text.encode(), mode=0o600)

    # 4. The client's side: raw keys (shown nowhere else), the URL, values to ask for.
    url = f"http://{bind}"
    env_text = (
        "# The example relay's client side, written by `assay relay init` (synthetic data\n"
        f"# only). Load it into a shell with:  . {directory / ENV_FILE}\n"
        f"RELAY_URL={url}\n"
        "# scopes civil:metadata, civil:read (records and lookups)\n"
        f"CASEWORKER_KEY={keys['caseworker']['key']}\n"
        "# scopes civil:metadata, civil:aggregate (aggregates)\n"
        f"STATISTICS_KEY={keys['statistics']['key']}\n"
        "# a national_id that is in the synthetic data, and a household id\n"
        f"SAMPLE_NATIONAL_ID={sample_id}\n"
        f"SAMPLE_HOUSEHOLD_ID={sample_household}\n"
    )
    atomic_write(stage / ENV_FILE, env_text.encode(), mode=0o600)

    # 5. Check it as startup would: schema, references, secrets, commitments, sources.
    checked = check_config(config, static=False)
    return {
        "dir": str(directory),
        "config": str(directory / CONFIG_FILE),
        "env_file": str(directory / ENV_FILE),
        "url": url,
        "people": people,
        "api_keys": {
            k: {"fingerprint": v["fingerprint"], "commitment": v["commitment"]}
            for k, v in keys.items()
        },
        "answer_public_key": str(directory / "secrets" / "answer-signing.key.pub"),
        "sample_national_id": sample_id,
        "checked": checked["checked"],
    }


def print_init(out: dict[str, Any]) -> None:
    d = out["dir"]
    print(f"created the example relay in {d} (synthetic data only; checked: "
          f"{', '.join(out['checked'])})")  # fmt: skip
    print(f"  {out['config']:<36} the config (API key commitments filled in)")
    print(f"  {d + '/data/':<36} {out['people']} synthetic people and their households")
    print(f"  {d + '/secrets/':<36} audit and signing keys, API key fingerprints (0600)")
    print(f"  {out['env_file']:<36} API keys, RELAY_URL, a sample national_id (0600)")
    print("next:")
    print(f"  assay relay serve --config {out['config']}")
    print("and in another shell:")
    print(f"  . {out['env_file']}")
    print('  curl -H "Authorization: Bearer $CASEWORKER_KEY" -H "X-Purpose: eligibility-check" \\')
    print('    "$RELAY_URL/v1/datasets/civil/entities/person/records?national_id='
          '$SAMPLE_NATIONAL_ID"')  # fmt: skip
