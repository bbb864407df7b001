"""Configuration: the original docs' file, ${ENV} expansion, strictness, and the Secret type."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from truckllm.config import (
    ClientKey,
    ConfigError,
    Secret,
    client_key_digests,
    load_config,
    parse_config,
)

ORIGINAL_DOCS = """\
providers:
  - id: openai
    base_url: https://api.openai.com/v1
    keys:
      - secret: sk-your-key
        pricing:
          input_token_cost: 0.002
          output_token_cost: 0.01
model_aliases:
  gpt-4: openai:gpt-4
"""

TYPES = ["openai"]


def parse(text: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_config(textwrap.dedent(text), "test.yaml", env or {}, TYPES)


def test_original_docs_file_loads_as_written(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(ORIGINAL_DOCS)
    cfg = load_config(path, env={}, provider_types=TYPES)
    (provider,) = cfg.providers
    assert provider.id == "openai" and provider.type == "openai"
    assert provider.base_url == "https://api.openai.com/v1"
    (key,) = provider.keys
    assert key.secret == Secret("sk-your-key")
    assert key.id.startswith("openai-") and "sk-" not in key.id
    assert key.pricing.unit == "per_1k_tokens"
    # USD per 1,000 tokens: 1,000 prompt + 1,000 completion tokens cost 0.002 + 0.01.
    assert key.pricing.cost_usd(1000, 1000) == pytest.approx(0.012)
    assert cfg.model_aliases == {"gpt-4": "openai:gpt-4"}
    assert cfg.server.listen == ":8080"


def test_env_expansion_everywhere_with_defaults_and_coercion() -> None:
    cfg = parse(
        """
        providers:
          - id: ${PID:-local}
            base_url: http://${HOST}:8000/v1
            keys:
              - secret: ${KEY}
                weight: ${WEIGHT:-2.5}
                limits: {rpm: "${RPM}"}
        server:
          listen: ":${PORT:-9090}"
          admin_api_key: "a$$b"
        """,
        {"HOST": "vllm.internal", "KEY": "sk-from-env", "RPM": "60"},
    )
    p = cfg.providers[0]
    assert p.id == "local" and p.base_url == "http://vllm.internal:8000/v1"
    assert p.keys[0].secret is not None and p.keys[0].secret.reveal() == "sk-from-env"
    assert p.keys[0].weight == 2.5 and p.keys[0].limits.rpm == 60
    assert cfg.server.listen == ":9090"
    assert cfg.server.admin_api_key is not None and cfg.server.admin_api_key.reveal() == "a$b"


def test_expanded_values_are_not_reparsed_as_yaml() -> None:
    cfg = parse(
        "providers: [{id: p, base_url: 'http://x', keys: [{secret: '${K}'}]}]",
        {"K": "a: [b, c] # d"},
    )
    assert cfg.providers[0].keys[0].secret == Secret("a: [b, c] # d")


BAD = [
    (
        "providers: [{id: openai, keys: [{secret: a}, {secret: [1]}]}]",
        "test.yaml: providers[0].keys[1].secret: expected a string or null, got a list",
    ),
    (
        "providers: [{id: openai, base_url: 'http://x', bogus: 1}]",
        "test.yaml: providers[0].bogus: unknown key",
    ),
    (
        "providers: [{id: openai}]\nmodel_alias: {a: openai:b}",
        "test.yaml: model_alias: unknown key",
    ),
    (
        "providers: [{id: openai}, {id: openai}]",
        "test.yaml: providers[1].id: duplicate provider id 'openai'",
    ),
    (
        "providers: [{id: a, base_url: 'http://x', keys: [{id: k, secret: s1}]}, {id: b, base_url: 'http://y', keys: [{id: k, secret: s2}]}]",
        "test.yaml: providers[1].keys[0].id: duplicate key id 'k'",
    ),
    (
        "providers: [{id: a, base_url: 'http://x', keys: [{secret: same}, {secret: same}]}]",
        "test.yaml: providers[0].keys[1].id: duplicate key id",
    ),
    (
        "providers: [{id: openai}]\nmodel_aliases: {gpt-4: azure:gpt-4}",
        "test.yaml: model_aliases.gpt-4: unknown provider 'azure'",
    ),
    (
        "providers: [{id: openai}]\nmodel_aliases: {gpt-4: [openai:gpt-4, gpt4]}",
        "test.yaml: model_aliases.gpt-4[1]: 'gpt4' must have the form provider:model",
    ),
    (
        "providers: [{id: openai, keys: [{secret: '${MISSING}'}]}]",
        "test.yaml: providers[0].keys[0].secret: environment variable MISSING is not set and has no default",
    ),
    (
        "providers: [{id: openai, keys: [{secret: s, limits: {rpm: fast}}]}]",
        "test.yaml: providers[0].keys[0].limits.rpm: expected an integer or null, got a string",
    ),
    (
        "providers: [{id: openai, keys: [{secret: s, limits: {rpm: 0}}]}]",
        "test.yaml: providers[0].keys[0].limits.rpm: must be at least 1",
    ),
    (
        "providers: [{id: openai, keys: [{secret: s, weight: true}]}]",
        "test.yaml: providers[0].keys[0].weight: expected a number, got a boolean",
    ),
    (
        "providers: [{id: openai, keys: [{secret: s, pricing: {unit: per_million}}]}]",
        "test.yaml: providers[0].keys[0].pricing.unit: expected one of 'per_1k_tokens', 'per_1m_tokens', 'per_token', got 'per_million'",
    ),
    (
        "providers: [{id: custom}]",
        "test.yaml: providers[0].base_url: is required for this provider",
    ),
    (
        "providers: [{id: custom, base_url: 'ftp://host'}]",
        "test.yaml: providers[0].base_url: 'ftp://host' is not an http(s) URL",
    ),
    (
        "providers: [{id: claude}]",
        "test.yaml: providers[0].type: unknown provider type 'anthropic' (available: openai)",
    ),
    (
        "providers: [{id: 'bad:id', base_url: 'http://x'}]",
        "test.yaml: providers[0].id: 'bad:id' is not a valid id",
    ),
    ("providers: []", "test.yaml: providers: at least one provider is required"),
    (
        "providers: [{id: openai}]\nserver: {listen: nowhere}",
        "test.yaml: server.listen: cannot parse listen address 'nowhere'",
    ),
    (
        "providers: [{id: openai}]\nserver: {api_keys: [{id: a}]}",
        "test.yaml: server.api_keys[0]: give exactly one of key or key_sha256",
    ),
    (
        "providers: [{id: openai}]\nserver: {api_keys: [{id: a, key_sha256: abc}]}",
        "test.yaml: server.api_keys[0].key_sha256: must be 64 hexadecimal digits",
    ),
    (
        "providers: [{id: openai}]\nserver: {max_body_bytes: -1}",
        "test.yaml: server.max_body_bytes: must be positive",
    ),
    (
        "providers: [{id: openai}]\nretry: {max_attempts: 0}",
        "test.yaml: retry.max_attempts: must be at least 1",
    ),
    (
        "providers: [{id: openai}]\nrouting: {outlier: {min_success_rate: 1.5}}",
        "test.yaml: routing.outlier.min_success_rate: must be between 0 and 1",
    ),
    (
        "providers: [{id: openai}]\nrouting: {outlier: {base_ejection: 60, max_ejection: 30}}",
        "test.yaml: routing.outlier.max_ejection: must not be less than base_ejection",
    ),
    (
        "providers: [{id: openai}]\nrouting: {outlier: {min_requests: 0}}",
        "test.yaml: routing.outlier.min_requests: must be at least 1",
    ),
    (
        "providers: [{id: openai}]\nproviders: []",
        "test.yaml:2:1: invalid YAML: duplicate key 'providers'",
    ),
    ("- just\n- a list", "test.yaml: the top level must be a mapping, got a list"),
    (
        "providers: [{id: openai, keys: {secret: x}}]",
        "test.yaml: providers[0].keys: expected a list, got a mapping",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[e.split(": ")[1] for _, e in BAD])
def test_bad_files_name_the_file_and_key_path(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse("""
            providers:
              - id: openai
                typo: 1
                keys: [{secret: s, limits: {rpm: -5}}]
            model_aliases: {x: nope:y}
            """)
    assert len(info.value.problems) == 3, info.value.problems


def test_secret_never_prints() -> None:
    cfg = parse("""
        providers: [{id: openai, keys: [{secret: sk-live-TOPSECRET}]}]
        server: {admin_api_key: adm-TOPSECRET, api_keys: [cl-TOPSECRET, {id: team, key: cl2-TOPSECRET}]}
        """)
    for text in (repr(cfg), str(cfg), f"{cfg.providers[0].keys[0].secret}", repr(cfg.server)):
        assert "TOPSECRET" not in text
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(cfg.providers[0].keys[0].secret)


def test_client_keys_clear_and_hashed() -> None:
    digest = hashlib.sha256(b"client-secret").hexdigest()
    cfg = parse(f"""
        providers: [{{id: openai}}]
        server:
          api_keys:
            - plain-key
            - {{id: team-a, key: team-a-key}}
            - {{id: team-b, key_sha256: "{digest}"}}
        """)
    assert isinstance(cfg.server.api_keys[1], ClientKey)
    ids = client_key_digests(cfg)
    assert ids[hashlib.sha256(b"team-a-key").digest()] == "team-a"
    assert ids[hashlib.sha256(b"client-secret").digest()] == "team-b"
    assert ids[hashlib.sha256(b"plain-key").digest()].startswith("client-")


def test_type_and_base_url_are_inferred_for_well_known_ids() -> None:
    cfg = parse("providers: [{id: groq, keys: [{secret: g}]}, {id: ollama}]")
    groq, ollama = cfg.providers
    assert groq.type == "openai" and groq.base_url == "https://api.groq.com/openai/v1"
    assert ollama.keys[0].secret is None and ollama.keys[0].id == "ollama-anonymous"


def test_key_ids_are_stable_across_reordering() -> None:
    a = parse("providers: [{id: p, base_url: 'http://x', keys: [{secret: one}, {secret: two}]}]")
    b = parse("providers: [{id: p, base_url: 'http://x', keys: [{secret: two}, {secret: one}]}]")
    assert {k.id for k in a.providers[0].keys} == {k.id for k in b.providers[0].keys}
    assert a.providers[0].keys[0].id == b.providers[0].keys[1].id


def test_check_command_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(ORIGINAL_DOCS)
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [{id: openai, keys: [{secret: s, limits: {rpm: x}}]}]\nextra: 1\n")
    ok = subprocess.run(
        [sys.executable, "-m", "truckllm", "check", "--config", str(good)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    ko = subprocess.run(
        [sys.executable, "-m", "truckllm", "check", "-config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ko.returncode == 2
    lines = ko.stderr.strip().splitlines()
    assert (
        f"{bad}: providers[0].keys[0].limits.rpm: expected an integer or null, got a string"
        in lines
    )
    assert any(line.startswith(f"{bad}: extra: unknown key") for line in lines)
    missing = subprocess.run(
        [sys.executable, "-m", "truckllm", "check", "--config", str(tmp_path / "none.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "cannot read" in missing.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (  # a flow mapping never closed: file, line, column, the line, a caret under the column
            "providers:\n  - id: openai\n    keys: [{secret: x, weight: 2]\n",
            [
                "test.yaml:3:33: invalid YAML: expected ',' or '}', but got ']' "
                "(while parsing a flow mapping at line 3, column 12)",
                "        keys: [{secret: x, weight: 2]",
                " " * (4 + 32) + "^",
            ],
        ),
        (  # a key at the wrong indentation
            "providers:\n  - id: a\n  id: b\n",
            [
                "test.yaml:3:3: invalid YAML: expected <block end>, but found '?' "
                "(while parsing a block collection at line 2, column 3)",
                "      id: b",
                "      ^",
            ],
        ),
        (  # a tab where indentation must be spaces: the caret keeps the tab
            "providers:\n\t- id: a\n",
            [
                "test.yaml:2:1: invalid YAML: found character '\\t' that cannot start any token",
                "    \t- id: a",
                "    ^",
            ],
        ),
    ],
    ids=["flow", "indentation", "tab"],
)
def test_yaml_syntax_errors_show_file_line_column_and_the_line(
    text: str, expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.yaml", {}, TYPES)
    (problem,) = info.value.problems
    assert problem.splitlines() == expected
    assert "<unicode string>" not in problem


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ('"${RPM:-abc}"', {}, "expected an integer or null, got 'abc' (from ${RPM})"),
        ('"${RPM}"', {"RPM": "12x"}, "expected an integer or null, got '12x' (from ${RPM})"),
        (
            '"${A}${B}"',
            {"A": "1", "B": "x"},
            "expected an integer or null, got '1x' (from ${A}, ${B})",
        ),
        (  # a variable named like a credential: its value is never shown
            '"${OPENAI_API_KEY}"',
            {"OPENAI_API_KEY": "sk-live-secret"},
            "expected an integer or null, got a string (from ${OPENAI_API_KEY}; not shown: "
            "it may be a secret)",
        ),
    ],
)
def test_expanded_values_that_fail_name_the_variable_and_value(
    value: str, env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse(
            f"""
            providers:
              - id: openai
                keys: [{{secret: s, limits: {{rpm: {value}}}}}]
            """,
            env,
        )
    assert info.value.problems == [f"test.yaml: providers[0].keys[0].limits.rpm: {expected}"]
    assert "sk-live-secret" not in str(info.value)


def test_an_expanded_choice_names_its_variable() -> None:
    with pytest.raises(ConfigError) as info:
        parse(
            "providers: [{id: openai}]\nrouting: {strategy: '${STRATEGY:-fastest}'}",
        )
    (problem,) = info.value.problems
    assert problem.startswith("test.yaml: routing.strategy: expected one of 'round_robin'")
    assert problem.endswith("got 'fastest' (from ${STRATEGY})")


def test_secret_fields_never_show_an_expanded_value() -> None:
    """A value bound for a Secret field is never printed, whatever its variable is called."""
    from truckllm.config.decode import Decoder, Expanded

    decoder = Decoder()
    decoder.wrong("server.api_keys[0]", Secret | ClientKey, Expanded("hunter2", ("CLIENT",)))
    assert decoder.problems == [
        "server.api_keys[0]: expected a string or a mapping, got a string "
        "(from ${CLIENT}; not shown: it may be a secret)"
    ]


@pytest.mark.parametrize(
    ("provider", "warning"),
    [
        ("{id: openai}", None),  # the default: https://api.openai.com/v1
        ("{id: groq}", None),  # https://api.groq.com/openai/v1
        ("{id: x, base_url: 'https://api.perplexity.ai'}", None),  # documented without /v1
        ("{id: x, base_url: 'https://res.openai.azure.com/openai/deployments/gpt4o'}", None),
        (
            "{id: x, type: openai, base_url: 'https://generativelanguage.googleapis.com/v1beta/openai'}",
            None,
        ),
        ("{id: x, base_url: 'http://localhost:8000'}", "has no version in its path"),
        (
            "{id: x, base_url: 'https://api.openai.com/v1/chat/completions'}",
            "ends with the endpoint /chat/completions",
        ),
        (
            "{id: x, type: openai, base_url: 'https://generativelanguage.googleapis.com/v1beta'}",
            "is Gemini's native API",
        ),
        ("{id: anthropic}", None),
        (
            "{id: a, type: anthropic, base_url: 'https://api.anthropic.com/v1'}",
            "includes a version",
        ),
        ("{id: a, type: anthropic, base_url: 'https://proxy.example/anthropic'}", None),
        ("{id: gemini}", None),
        (
            "{id: g, type: gemini, base_url: 'https://generativelanguage.googleapis.com/v1beta'}",
            None,
        ),
        (
            "{id: g, type: gemini, base_url: 'https://generativelanguage.googleapis.com/v1beta/openai'}",
            "is Gemini's OpenAI-compatible endpoint",
        ),
        (
            "{id: g, type: gemini, base_url: 'https://generativelanguage.googleapis.com/v1beta/models'}",
            "has more after its version",
        ),
    ],
)
def test_base_url_forms_that_cannot_work_are_warned_about(
    provider: str, warning: str | None
) -> None:
    from truckllm.config.advice import base_url_warnings

    cfg = parse_config(
        f"providers: [{provider}]", "test.yaml", {}, ["openai", "anthropic", "gemini"]
    )
    found = base_url_warnings(cfg)
    if warning is None:
        assert found == []
    else:
        (line,) = found
        assert line.startswith(f"providers[0].base_url: {cfg.providers[0].base_url!r} {warning}")
