"""Names, metadata and free text: attacks on the validators, and an auditor of patterns.

``re.match(r"^x$")`` accepts ``"x\\n"``: ``$`` also matches before a final newline.
Every accepted name or key must be exactly what the pattern describes, and no accepted
text may carry a control or format character that changes how a log line or a terminal
shows it.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

import assay
from assay.core.errors import BadRequest
from assay.core.tokens import check_id, check_scopes
from assay.registry.digests import parse_digest
from assay.registry.validate import REFUSED_CATEGORIES, check_metadata, check_name, check_text

DAEMON = Path(assay.__file__).resolve().parent

#: Every code point class, including the ones the validators must refuse.
ANY_TEXT = st.text(st.characters(codec=None, categories=None, exclude_characters=None), max_size=40)
_PLAIN = st.text(st.sampled_from("ab09._-+/="), min_size=1, max_size=8)
_SPIKE = st.one_of(
    st.sampled_from("\n\r\t\x00\x7f\x85\x9b\u2028\u2029\u202e\u2066\u200b\ufeff\ud800"),
    st.characters(codec=None),
)
#: Mostly valid-looking text with one hostile character before, inside or after it.
ASCIIISH = st.one_of(
    st.builds(lambda a, c: a + c, _PLAIN, _SPIKE),
    st.builds(lambda a, c, b: a + c + b, _PLAIN, _SPIKE, _PLAIN),
    st.builds(lambda c, a: c + a, _SPIKE, _PLAIN),
)


def _accepted(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except BadRequest:
        return None


# -- trailing newline: the `$` class --------------------------------------------------------


@pytest.mark.parametrize(
    "attack",
    [
        lambda: check_name("models/llama\n"),
        lambda: check_name("models\n/llama"),
        lambda: check_metadata(["license\n=mit"], max_entries=8),
        lambda: check_metadata(["license=mit\n"], max_entries=8),
        lambda: check_id("bob\n"),
        lambda: check_scopes(["artifacts:read\n"]),
    ],
    ids=["name", "segment", "meta-key", "meta-value", "token-id", "scope"],
)
def test_trailing_newline_is_refused_in_every_identifier(attack: Any) -> None:
    with pytest.raises(BadRequest):
        attack()


def test_a_digest_is_canonical_whatever_whitespace_surrounds_it() -> None:
    good = "sha256:" + "a" * 64
    assert parse_digest(good + "\n") == good  # stripped, then matched exactly
    with pytest.raises(BadRequest):
        parse_digest("sha256:" + "a" * 64 + "\n0")


# -- property: nothing accepted carries a control or format character ----------------------


def _clean(text: str) -> bool:
    return not any(unicodedata.category(c) in REFUSED_CATEGORIES for c in text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(ANY_TEXT, ASCIIISH))
def test_no_accepted_name_contains_a_control_or_non_ascii_character(name: str) -> None:
    accepted = _accepted(check_name, name)
    if accepted is not None:
        assert accepted == name
        assert all(0x20 < ord(c) < 0x7F for c in name), repr(name)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(ANY_TEXT, ASCIIISH), st.one_of(ANY_TEXT, ASCIIISH))
def test_no_accepted_metadata_key_or_value_contains_a_control_character(
    key: str, value: str
) -> None:
    accepted = _accepted(check_metadata, [f"{key}={value}"], max_entries=4)
    if accepted is not None:
        ((k, v),) = accepted.items()
        assert all(0x20 < ord(c) < 0x7F for c in k), repr(k)
        assert _clean(v), repr(v)


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_no_accepted_token_id_contains_anything_but_its_alphabet(token_id: str) -> None:
    if _accepted(check_id, token_id) is not None:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", token_id)


HOSTILE = {
    "NEL": "\x85", "CSI": "\x9b", "LS": "\u2028", "PS": "\u2029", "RLO": "\u202e",
    "LRI": "\u2066", "ZWSP": "\u200b", "BOM": "\ufeff", "surrogate": "\ud800",
    "private": "\ue000", "DEL": "\x7f", "TAB": "\t",
}  # fmt: skip


@pytest.mark.parametrize("char", list(HOSTILE.values()), ids=list(HOSTILE))
def test_text_shown_to_people_refuses_c1_bidi_and_separators(char: str) -> None:
    with pytest.raises(BadRequest):
        check_text(f"rev{char}oked", what="reason", max_chars=100)
    with pytest.raises(BadRequest):
        check_metadata([f"source=acme{char}"], max_entries=4)


def test_text_keeps_ordinary_letters_from_every_script() -> None:
    text = "Z\u00fcrich \u2013 \u6771\u4eac \u2013 \u0395\u03bb\u03bb\u03ac\u03b4\u03b1"
    text += " \u2013 \u0639\u0631\u0628\u0649 \u2713"
    assert check_text(text, what="reason", max_chars=100) == text


# -- auditors: every pattern in daemon/ anchors at the true end ------------------------------


RE_FUNCS = {"compile", "match", "fullmatch", "search"}


def _regex_literals() -> list[tuple[str, int, str]]:
    found: list[tuple[str, int, str]] = []
    for path in sorted(DAEMON.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in RE_FUNCS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "re"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.append((str(path.relative_to(DAEMON)), node.lineno, node.args[0].value))
    return found


def test_no_python_regex_in_the_daemon_uses_a_dollar_anchor() -> None:
    literals = _regex_literals()
    assert len(literals) > 10  # the walk found the patterns at all
    offenders = [
        f"{path}:{line}: {pattern!r}"
        for path, line, pattern in literals
        if re.search(r"(?<!\\)\$", pattern)
    ]
    assert not offenders, "use fullmatch or \\Z, not $:\n" + "\n".join(offenders)


def _all_models() -> list[type[BaseModel]]:
    for mod in pkgutil.walk_packages(assay.__path__, "assay."):
        if mod.name.startswith("assay.cli") or mod.name == "assay.__main__":
            continue
        importlib.import_module(mod.name)
    seen: list[type[BaseModel]] = []
    stack: list[type[BaseModel]] = [BaseModel]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub.__module__.startswith("assay.") and sub not in seen:
                seen.append(sub)
            stack.append(sub)
    return seen


def _pydantic_patterns() -> set[str]:
    patterns: set[str] = set()
    for model in _all_models():
        for info in model.model_fields.values():
            for meta in info.metadata:
                pattern = getattr(meta, "pattern", None)
                if isinstance(pattern, str):
                    patterns.add(pattern)
    return patterns


PATTERNS = sorted(_pydantic_patterns())


def test_every_config_pattern_is_anchored_at_both_ends() -> None:
    """pydantic *searches* a pattern: one without ``^`` and ``$`` accepts any text that
    merely contains a match (e.g. a scope pattern reused from ``re.fullmatch`` code)."""
    assert len(PATTERNS) >= 8, PATTERNS  # the walk found the models at all
    unanchored = [p for p in PATTERNS if not (p.startswith("^") and p.endswith("$"))]
    assert not unanchored, unanchored


@pytest.mark.parametrize("pattern", PATTERNS)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_config_pattern_refuses_a_trailing_newline(pattern: str, data: st.DataObject) -> None:
    """pydantic's default engine (Rust ``regex``) reads ``$`` as the end of the text; this
    proves it for every pattern in every config model, so a switch to Python's ``re``
    engine, whose ``$`` also matches before a final newline, would be caught here."""
    adapter: TypeAdapter[str] = TypeAdapter(Annotated[str, Field(pattern=pattern)])
    value = data.draw(st.from_regex(re.compile(pattern.strip("^$")), fullmatch=True))
    assert adapter.validate_python(value) == value
    for suffix in ("\n", "\r\n", "\n" + value):
        with pytest.raises(ValidationError):
            adapter.validate_python(value + suffix)
