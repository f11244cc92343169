"""Memory limits, the budget, and the serving settings of tritonctl.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.budget import (
    CONFIG_FILENAME,
    MemoryBudget,
    MemoryLimit,
    ServingConfig,
    find_config_file,
    load_serving_config,
    parse_memory_limit,
    parse_serving_config,
    resolve_serving_config,
)
from manager.errors import ConfigError
from manager.policies import DEFAULT_POLICY
from manager.units import format_duration, format_size, parse_size

GIB = 2**30


# --- parse_size ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12884901888", 12884901888),
        ("12GB", 12 * 10**9),
        ("12gb", 12 * 10**9),
        ("12GiB", 12 * GIB),
        ("512MiB", 512 * 2**20),
        ("512 MB", 512 * 10**6),
        ("1.5G", int(1.5 * GIB)),
        ("1.5g", int(1.5 * GIB)),
        ("2K", 2048),
        ("2KB", 2000),
        ("1T", 2**40),
        ("100B", 100),
        ("1e9", 10**9),
        (" 3 GiB ", 3 * GIB),
        (".5GiB", GIB // 2),
        (4096, 4096),
    ],
)
def test_parse_size_reads_bytes_si_and_binary_units(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_treats_a_bare_g_as_binary_and_gb_as_si() -> None:
    assert parse_size("1G") == parse_size("1GiB") == 2**30
    assert parse_size("1GB") == 10**9


@pytest.mark.parametrize(
    "text", ["", "GB", "12XB", "-5", "-5GB", "1.5", "twelve", "1.2.3G", "5 G B"]
)
def test_parse_size_refuses_what_is_not_a_size_quoting_it(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_size(text)
    assert repr(text) in str(err.value)


def test_parse_size_names_the_known_units_for_an_unknown_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown unit 'XB'.*GiB"):
        parse_size("12XB")


def test_format_size_and_duration_are_for_people() -> None:
    assert format_size(512) == "512 B"
    assert format_size(1536 * 2**20) == "1.5 GiB"
    assert format_size(3 * 2**40) == "3.0 TiB"
    assert format_duration(45) == "45 s"
    assert format_duration(12 * 60) == "12 min"
    assert format_duration(3 * 3600) == "3.0 h"
    assert format_duration(3 * 86400) == "3.0 d"


# --- memory limits ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("12GB", MemoryLimit(num_bytes=12 * 10**9)),
        ("12884901888", MemoryLimit(num_bytes=12884901888)),
        (12884901888, MemoryLimit(num_bytes=12884901888)),
        ("1.5G", MemoryLimit(num_bytes=int(1.5 * GIB))),
        ("0.8", MemoryLimit(fraction=0.8)),
        (0.8, MemoryLimit(fraction=0.8)),
        ("80%", MemoryLimit(fraction=0.8)),
        ("1", MemoryLimit(fraction=1.0)),
        (1, MemoryLimit(fraction=1.0)),
    ],
)
def test_parse_memory_limit_reads_sizes_and_fractions(
    value: str | int | float, expected: MemoryLimit
) -> None:
    assert parse_memory_limit(value) == expected


@pytest.mark.parametrize("value", ["0", "0%", "150%", "-1", "1.5", "lots", "12XB", 0, -3, True])
def test_parse_memory_limit_refuses_nonsense_quoting_it(value: str | int) -> None:
    with pytest.raises(ConfigError) as err:
        parse_memory_limit(value)
    assert repr(value) in str(err.value)


@pytest.mark.parametrize(
    ("value", "hint"),
    [("10B", "holds no model"), ("512KiB", "the least is 1"), ("10", "add a unit (e.g. 10G)")],
)
def test_parse_memory_limit_refuses_a_limit_too_small_for_any_model(value: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_memory_limit(value)
    assert repr(value) in str(err.value) and hint in str(err.value)
    assert parse_memory_limit("1MiB") == MemoryLimit(num_bytes=2**20)


def test_a_fraction_resolves_against_the_device_total() -> None:
    assert parse_memory_limit("0.5").resolve(80 * GIB) == 40 * GIB


def test_an_absolute_limit_larger_than_the_device_is_capped_to_it() -> None:
    assert parse_memory_limit("100GiB").resolve(80 * GIB) == 80 * GIB


def test_an_absolute_limit_is_independent_of_the_device_total() -> None:
    assert parse_memory_limit("12GiB").resolve(80 * GIB) == 12 * GIB


def test_a_memory_limit_is_either_bytes_or_a_fraction() -> None:
    with pytest.raises(ConfigError):
        MemoryLimit()
    with pytest.raises(ConfigError):
        MemoryLimit(num_bytes=1, fraction=0.5)
    assert str(MemoryLimit(fraction=0.8)) == "80% of total"
    assert str(MemoryLimit(num_bytes=12 * GIB)) == "12.0 GiB"


# --- MemoryBudget -----------------------------------------------------------------------------


def test_a_budget_without_a_limit_is_the_whole_device() -> None:
    assert MemoryBudget().limit_bytes(64 * GIB) == 64 * GIB


def test_budget_resolves_the_limit_and_watermarks_in_bytes() -> None:
    budget = MemoryBudget(limit=MemoryLimit(fraction=0.5), high_watermark=0.9, low_watermark=0.75)
    assert budget.limit_bytes(80 * GIB) == 40 * GIB
    assert budget.high_bytes(80 * GIB) == 36 * GIB
    assert budget.low_bytes(80 * GIB) == 30 * GIB


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_models": 0}, "max_models"),
        ({"max_models": True}, "max_models"),
        ({"high_watermark": 1.5}, "high_watermark"),
        ({"low_watermark": 0}, "low_watermark"),
        ({"high_watermark": 0.5, "low_watermark": 0.8}, "must not exceed"),
    ],
)
def test_budget_refuses_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MemoryBudget(**kwargs)


def test_budget_refuses_a_device_without_memory() -> None:
    with pytest.raises(ConfigError, match="positive"):
        MemoryBudget().limit_bytes(0)


# --- tritonctl.yaml ---------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / CONFIG_FILENAME
    path.write_text(text, encoding="utf-8")
    return path


def test_a_full_config_file_loads_every_setting(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "memory_limit: 12GB\n"
        "max_models: 4\n"
        "eviction_policy: lru\n"
        "high_watermark: 0.9\n"
        "low_watermark: 0.7\n"
        "pinned: [encoder, router]\n",
    )
    config = load_serving_config(path)
    assert config.budget == MemoryBudget(
        limit=MemoryLimit(num_bytes=12 * 10**9),
        max_models=4,
        high_watermark=0.9,
        low_watermark=0.7,
    )
    assert config.eviction_policy == "lru"
    assert config.pinned == frozenset({"encoder", "router"})
    assert config.source == path


def test_a_fraction_in_yaml_is_a_share_of_the_device(tmp_path: Path) -> None:
    config = load_serving_config(write(tmp_path, "memory_limit: 0.8\n"))
    assert config.budget.limit == MemoryLimit(fraction=0.8)


def test_an_empty_config_file_means_the_defaults(tmp_path: Path) -> None:
    config = load_serving_config(write(tmp_path, ""))
    assert config.budget == MemoryBudget()
    assert config.eviction_policy == DEFAULT_POLICY
    assert config.pinned == frozenset()


def test_unknown_keys_are_refused_with_the_known_ones_listed(tmp_path: Path) -> None:
    path = write(tmp_path, "memory_limit: 1G\nmax_model: 3\npolicy: lru\n")
    with pytest.raises(ConfigError) as err:
        load_serving_config(path)
    message = str(err.value)
    assert str(path) in message
    assert "unknown settings max_model, policy" in message
    assert "known: memory_limit, max_models, eviction_policy" in message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("memory_limit: 12XB\n", "invalid memory limit '12XB'"),
        ("memory_limit: 1.5\n", "invalid memory limit 1.5"),
        ("max_models: 0\n", "max_models must be a positive integer"),
        ("max_models: yes\n", "max_models must be a positive integer"),
        ("max_models: '3'\n", "max_models must be a positive integer"),
        ("eviction_policy: mru\n", "unknown eviction policy 'mru'"),
        ("eviction_policy: [lru]\n", "eviction_policy must be a name"),
        ("high_watermark: 2\n", "high_watermark must be a number in"),
        ("low_watermark: 0.99\n", "must not exceed"),
        ("pinned: encoder\n", "pinned must be a list of model names"),
        ("pinned: [../etc]\n", "pinned model '../etc'"),
        ("- memory_limit: 1G\n", "expected a mapping of settings, got list"),
    ],
)
def test_bad_settings_are_refused_naming_the_file_and_the_value(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_serving_config(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "memory_limit: [12GB\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_serving_config(path)


def test_a_setting_given_twice_is_a_config_error_not_the_last_one_silently(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "memory_limit: 600MiB\nmax_models: 2\nmemory_limit: 6000MiB\n")
    with pytest.raises(ConfigError, match=r"'memory_limit' is given twice.*line 3"):
        load_serving_config(path)
    # the same key in different mappings is fine, and so is every other YAML feature used
    path = write(tmp_path, "memory_limit: 600MiB\npinned: [a, b]\n")
    assert load_serving_config(path).pinned == frozenset({"a", "b"})


def test_an_unreadable_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_serving_config(tmp_path / "missing.yaml")


def test_the_config_file_is_found_in_the_repository(tmp_path: Path) -> None:
    assert find_config_file(tmp_path) is None
    path = write(tmp_path, "max_models: 2\n")
    assert find_config_file(tmp_path) == path


def test_an_explicit_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        find_config_file(tmp_path, tmp_path / "nope.yaml")


def test_an_explicit_config_file_wins_over_the_repositorys(tmp_path: Path) -> None:
    write(tmp_path, "max_models: 2\n")
    other = tmp_path / "other.yaml"
    other.write_text("max_models: 7\n", encoding="utf-8")
    assert resolve_serving_config(tmp_path, other).budget.max_models == 7


def test_command_line_settings_override_the_file(tmp_path: Path) -> None:
    write(tmp_path, "memory_limit: 12GB\nmax_models: 2\neviction_policy: fifo\npinned: [a]\n")
    config = resolve_serving_config(
        tmp_path, memory_limit="0.5", max_models=9, eviction_policy="lru"
    )
    assert config.budget.limit == MemoryLimit(fraction=0.5)
    assert config.budget.max_models == 9
    assert config.eviction_policy == "lru"
    assert config.pinned == frozenset({"a"})


def test_without_a_file_the_defaults_and_overrides_apply(tmp_path: Path) -> None:
    config = resolve_serving_config(tmp_path, memory_limit="12GiB")
    assert config.budget.limit == MemoryLimit(num_bytes=12 * GIB)
    assert config.eviction_policy == DEFAULT_POLICY
    assert config.source is None


def test_serving_config_refuses_an_unknown_policy() -> None:
    with pytest.raises(ConfigError, match="known: lru"):
        ServingConfig(eviction_policy="random")


def test_parse_serving_config_accepts_already_parsed_data() -> None:
    config = parse_serving_config({"memory_limit": "80%", "pinned": ["x"]})
    assert config.budget.limit == MemoryLimit(fraction=0.8)
    assert config.pinned == frozenset({"x"})
