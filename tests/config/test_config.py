"""Config models, loader, error report and `aggbatt check-config`.

Expected values come from docs/reference-aggregator.md §6 and the reference's presets, not from the code.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

try:
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib

from aggbatt import cli
from aggbatt.config import (
    Config,
    ConfigError,
    ConfigIssue,
    config_from_dict,
    default_config,
    default_toml_text,
    load_config,
    parse_config,
)
from aggbatt.daemon.reload import read_config

REPO = Path(__file__).resolve().parents[2]
PACKAGED_DEFAULTS = REPO / "src" / "aggbatt" / "data" / "default.toml"

LFP_MONTHS = [3.55, 3.50, 3.50, 3.45, 3.40, 3.40, 3.40, 3.40, 3.45, 3.50, 3.50, 3.55]
LTO_MONTHS = [2.50, 2.45, 2.45, 2.40, 2.35, 2.35, 2.35, 2.35, 2.40, 2.45, 2.45, 2.50]


def errors_of(text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), "test.toml")
    return caught.value.errors


def only_error(text: str) -> ConfigIssue:
    errors = errors_of(text)
    assert len(errors) == 1, [e.key for e in errors]
    return errors[0]


def leaf_keys(document: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in document.items():
        if isinstance(value, dict):
            keys |= leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


def model_leaf_fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields.update(model_leaf_fields(annotation, f"{prefix}{name}."))
        else:
            fields[prefix + name] = info
    return fields


# --- defaults ------------------------------------------------------------------------------------


def test_defaults_load_with_the_documented_values() -> None:
    config = default_config()
    assert config.service.name == "com.victronenergy.battery.aggregate"
    assert config.service.unique_id == "aggbatt"
    assert config.service.device_instance == 100
    assert config.service.tick_interval == 1.0
    assert config.service.debounce == 0.02
    assert config.service.select_as_battery is False
    assert config.discovery.product_name_contains == ["SerialBattery"]
    assert config.discovery.include == [] and config.discovery.exclude == []
    assert config.freshness.stale_after == 10.0
    assert config.freshness.stale_after_idle == 120.0
    assert config.freshness.on_pack_lost == "degrade"
    assert config.aggregation.temperature == "max"
    assert config.safety.on_internal_error == "dcl_min_pack"
    assert config.safety.watchdog_timeout == 10.0
    assert config.soc.strategy == "bms_average"
    assert config.soc.max_state_age == 7 * 86400
    assert config.current.source == "bms_sum"
    assert config.current.dcload_sign == -1
    assert config.current.shunts == []
    assert config.charge.strategy == "passthrough"
    assert config.charge.passthrough.cvl_mode == "min"
    own = config.charge.own
    assert own.charge_cell_voltage == LFP_MONTHS
    assert own.balancing_timeout == 4 * 3600
    assert own.cell_charge_voltages == [2.90, 2.95, 3.30, 3.40, 3.45]
    assert own.cell_charge_factors == [0.2, 1, 1, 0.1, 0]
    assert own.cell_discharge_voltages == [2.90, 3.00, 3.10]
    assert own.cell_discharge_factors == [0, 0.05, 1]
    assert config.feedin.guard is True
    assert config.logging.level == "info"


def test_none_and_empty_file_mean_defaults() -> None:
    assert load_config(None) == default_config()
    assert parse_config("") == default_config()
    assert parse_config("# only a comment\n") == default_config()


def test_every_key_of_default_toml_has_a_comment() -> None:
    lines = PACKAGED_DEFAULTS.read_text(encoding="utf-8").splitlines()
    key_lines = [i for i, line in enumerate(lines) if re.match(r"^[A-Za-z0-9_]+\s*=", line)]
    # The regex must see every key tomllib sees, or the check below would miss some.
    assert len(key_lines) == len(leaf_keys(tomllib.loads("\n".join(lines))))
    uncommented = [
        lines[i]
        for i in key_lines
        if not (lines[i - 1].lstrip().startswith("#") or re.search(r"\s#\s", lines[i]))
    ]
    assert uncommented == []


def test_models_and_default_toml_agree() -> None:
    document = tomllib.loads(PACKAGED_DEFAULTS.read_text(encoding="utf-8"))
    fields = model_leaf_fields(Config)
    assert leaf_keys(document) == set(fields)
    # Defaults live only in the file: no model field may carry its own.
    assert [key for key, info in fields.items() if not info.is_required()] == []
    # Validation keeps every value of the file as written.
    assert default_config().model_dump() == document


def test_repo_config_default_is_the_packaged_file() -> None:
    link = REPO / "config" / "default.toml"
    assert link.is_symlink()
    assert link.resolve() == PACKAGED_DEFAULTS.resolve()
    assert default_toml_text() == PACKAGED_DEFAULTS.read_text(encoding="utf-8")


def test_user_file_merges_over_defaults_key_by_key() -> None:
    config = parse_config("[charge.own]\nmax_charge_current = 100\n")
    assert config.charge.own.max_charge_current == 100.0
    assert config.charge.own.max_cell_voltage == 3.45
    assert config.charge.strategy == "passthrough"


def test_lists_replace_the_default_list() -> None:
    config = parse_config('[discovery]\nproduct_name_contains = ["JKBMS"]\n')
    assert config.discovery.product_name_contains == ["JKBMS"]


def test_config_from_dict_does_not_leak_into_defaults() -> None:
    config = config_from_dict({"discovery": {"include": ["pack1"]}, "freshness": {"stale_after": 0.3}})
    assert config.discovery.include == ["pack1"]
    assert config.freshness.stale_after == 0.3
    assert default_config().discovery.include == []
    assert default_config().freshness.stale_after == 10.0


def test_config_is_frozen() -> None:
    config = default_config()
    with pytest.raises(ValidationError):
        config.service.tick_interval = 5.0  # type: ignore[misc]


def test_integer_accepted_for_float() -> None:
    assert parse_config("[service]\ntick_interval = 2\n").service.tick_interval == 2.0


# --- example configs -------------------------------------------------------------------------------


def test_lfp_example_is_valid_and_matches_the_reference_preset() -> None:
    config = load_config(REPO / "config" / "lfp.toml")
    assert config.charge.strategy == "own"
    assert config.soc.strategy == "coulomb_counter"
    own = config.charge.own
    assert own.charge_cell_voltage == LFP_MONTHS
    assert (own.max_cell_voltage, own.min_cell_voltage, own.min_cell_hysteresis) == (3.45, 2.90, 0.1)
    assert own.balancing_cell_voltage == 3.40
    assert (own.balancing_repetition, own.cell_diff_max) == (10, 0.025)
    assert (own.max_charge_current, own.max_discharge_current) == (200, 200)
    assert own.cell_charge_voltages == [2.90, 2.95, 3.30, 3.40, 3.45]
    assert own.cell_charge_factors == [0.2, 1, 1, 0.1, 0]
    assert own.cell_discharge_voltages == [2.90, 3.00, 3.10]
    assert own.cell_discharge_factors == [0, 0.05, 1]
    assert (config.soc.full_cell_voltage, config.soc.empty_cell_voltage) == (3.45, 2.90)


def test_lto_example_is_valid_and_matches_the_reference_preset() -> None:
    config = load_config(REPO / "config" / "lto.toml")
    assert config.charge.strategy == "own"
    assert config.soc.strategy == "coulomb_counter"
    own = config.charge.own
    assert own.charge_cell_voltage == LTO_MONTHS
    assert (own.max_cell_voltage, own.min_cell_voltage, own.min_cell_hysteresis) == (2.6, 1.9, 0.3)
    assert own.balancing_cell_voltage == 2.5
    assert (own.balancing_repetition, own.cell_diff_max) == (10, 0.025)
    assert (own.max_charge_current, own.max_discharge_current) == (200, 200)
    assert own.cell_charge_voltages == [1.90, 1.95, 2.40, 2.50, 2.60]
    assert own.cell_charge_factors == [0.2, 1, 1, 0.1, 0]
    assert own.cell_discharge_voltages == [1.90, 2.00, 2.10]
    assert own.cell_discharge_factors == [0, 0.05, 1]
    assert (config.soc.full_cell_voltage, config.soc.empty_cell_voltage) == (2.5, 1.9)


# --- unknown keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "suggestion"),
    [
        ("[service]\ntick_intervall = 2\n", "service.tick_intervall", "service.tick_interval"),
        ("[service]\nTick_Interval = 2\n", "service.Tick_Interval", "service.tick_interval"),
        ("[service]\ntick = 2\n", "service.tick", "service.tick_interval"),
        ("[current]\nstale_after_idle = 30\n", "current.stale_after_idle", "freshness.stale_after_idle"),
        ("[charge]\nmax_charge_current = 100\n", "charge.max_charge_current", "charge.own.max_charge_current"),
        ("[charge.own]\ncell_charge_factor = [0, 1]\n", "charge.own.cell_charge_factor",
         "charge.own.cell_charge_factors"),
        ("[socc]\nstrategy = \"coulomb_counter\"\n", "socc", "soc"),
    ],
)
def test_unknown_key_is_an_error_with_a_suggestion(text: str, key: str, suggestion: str) -> None:
    issue = only_error(text)
    assert issue.key == key
    assert "unknown key" in issue.message
    assert f"did you mean {suggestion}?" in issue.message


def test_unknown_key_lists_the_valid_keys_of_its_table() -> None:
    issue = only_error("[feedin]\nguardd = false\n")
    assert issue.value is False
    assert "guard" in issue.message and "also_when_blocking" in issue.message


def test_typo_never_falls_back_to_the_default() -> None:
    with pytest.raises(ConfigError):
        parse_config("[soc]\nstrategy = \"coulomb_counter\"\nchage_efficiency = 0.9\n")


# --- validation rules ------------------------------------------------------------------------------

RULES = [
    # (id, toml, key of the error, words in the message)
    ("tables unequal length", "[charge.own]\ncell_charge_factors = [0.2, 1, 1, 0.1]\n",
     "charge.own.cell_charge_factors", ["4 entries", "has 5"]),
    ("discharge tables unequal length", "[charge.own]\ncell_discharge_voltages = [2.9, 3.0]\n",
     "charge.own.cell_discharge_factors", ["3 entries", "has 2"]),
    ("fewer than 2 knots",
     "[charge.own]\ncell_charge_voltages = [3.0]\n",
     "charge.own.cell_charge_voltages", ["1 entry", "at least 2"]),
    ("knots not increasing", "[charge.own]\ncell_charge_voltages = [2.90, 2.95, 3.30, 3.30, 3.45]\n",
     "charge.own.cell_charge_voltages", ["strictly increasing", "[3]"]),
    ("knots decreasing", "[charge.own]\ncell_discharge_voltages = [3.1, 3.0, 2.9]\n",
     "charge.own.cell_discharge_voltages", ["strictly increasing"]),
    ("factor above 1", "[charge.own]\ncell_charge_factors = [0.2, 1, 1.5, 0.1, 0]\n",
     "charge.own.cell_charge_factors[2]", ["at most 1", "0 to 1"]),
    ("factor below 0", "[charge.own]\ncell_discharge_factors = [-0.1, 0.05, 1]\n",
     "charge.own.cell_discharge_factors[0]", ["at least 0", "0 to 1"]),
    ("11 months", "[charge.own]\ncharge_cell_voltage = [3.4, 3.4, 3.4, 3.4, 3.4, 3.4, 3.4, 3.4, 3.4, 3.4, 3.4]\n",
     "charge.own.charge_cell_voltage", ["11 entries", "12"]),
    ("pack voltage as cell voltage", "[charge.own]\nmax_cell_voltage = 55.2\n",
     "charge.own.max_cell_voltage", ["at most 4.5", "V per cell"]),
    ("balancing below min cell", "[charge.own]\nbalancing_cell_voltage = 2.8\n",
     "charge.own.balancing_cell_voltage", ["below charge.own.min_cell_voltage"]),
    ("balancing above max cell", "[charge.own]\nbalancing_cell_voltage = 3.5\n",
     "charge.own.balancing_cell_voltage", ["above charge.own.max_cell_voltage"]),
    ("min cell not below max cell", "[charge.own]\nmin_cell_voltage = 3.45\n",
     "charge.own.min_cell_voltage", ["not below charge.own.max_cell_voltage"]),
    ("idle timeout shorter", "[freshness]\nstale_after_idle = 5\n",
     "freshness.stale_after_idle", ["shorter than freshness.stale_after"]),
    ("empty not below full", "[soc]\nempty_cell_voltage = 3.5\n",
     "soc.empty_cell_voltage", ["not below soc.full_cell_voltage"]),
    ("include and exclude overlap", "[discovery]\ninclude = [\"a\", \"b\"]\nexclude = [\"b\"]\n",
     "discovery.exclude", ['"b"', "discovery.include"]),
    ("nothing can be a pack", "[discovery]\nproduct_name_contains = []\n",
     "discovery.product_name_contains", ["no service can ever be a pack"]),
    ("shunt list and all shunts", "[current]\nshunts = [288]\nall_shunts = true\n",
     "current.all_shunts", ["not both"]),
    ("negative shunt instance", "[current]\nshunts = [\"House\", -1]\n",
     "current.shunts[1]", ["at least 0"]),
    ("watchdog shorter than two ticks", "[service]\ntick_interval = 6\n",
     "safety.watchdog_timeout", ["twice service.tick_interval", ">= 12"]),
    ("text for a number", "[service]\ntick_interval = \"1\"\n",
     "service.tick_interval", ["wrong type (text)", "0.1", "10"]),
    ("boolean for a number", "[freshness]\nidle_current = true\n",
     "freshness.idle_current", ["wrong type (a boolean)"]),
    ("float for an integer", "[charge.own]\nbalancing_repetition = 10.5\n",
     "charge.own.balancing_repetition", ["wrong type (a float)", "integer"]),
    ("number for a boolean", "[feedin]\nguard = 1\n",
     "feedin.guard", ["wrong type (an integer)", "true or false"]),
    ("nan", "[soc]\ncharge_efficiency = nan\n",
     "soc.charge_efficiency", ["finite"]),
    ("out of range", "[service]\ndebounce = 0.6\n",
     "service.debounce", ["at most 0.5"]),
    ("not a choice", "[aggregation]\ntemperature = \"average\"\n",
     "aggregation.temperature", ['"max"', '"mean"', '"min"']),
    ("sign not a choice", "[current]\ndcload_sign = 0\n",
     "current.dcload_sign", ["-1", "1"]),
    ("not a battery service", "[service]\nname = \"com.victronenergy.vebus.aggregate\"\n",
     "service.name", ["com.victronenergy.battery."]),
    ("scalar for a table", "charge = \"own\"\n",
     "charge", ["wrong type (text)", "a table"]),
]


@pytest.mark.parametrize(("text", "key", "words"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_each_rule_names_the_key_why_and_what_is_allowed(text: str, key: str, words: list[str]) -> None:
    issue = only_error(text)
    assert issue.key == key
    for word in words:
        assert word in issue.message
    assert "allowed: " in issue.message


@pytest.mark.parametrize(
    "text",
    [
        "[charge.own]\nbalancing_cell_voltage = 3.45\n",  # equal to max_cell_voltage
        "[charge.own]\nbalancing_cell_voltage = 2.90\n",  # equal to min_cell_voltage
        "[freshness]\nstale_after_idle = 10\n",  # equal to stale_after
        "[current]\nshunts = []\nall_shunts = true\n",
        "[current]\nshunts = [\"House\", 288]\n",
        "[discovery]\nproduct_name_contains = []\ninclude = [\"ttyUSB0\"]\n",
        "[charge.own]\ncell_discharge_voltages = [2.9, 3.1]\ncell_discharge_factors = [0, 1]\n",
    ],
)
def test_boundary_values_are_accepted(text: str) -> None:
    parse_config(text)


def test_balancing_voltage_below_every_monthly_voltage_is_allowed() -> None:
    # reference §3, second case: normal charging already at or above the balancing voltage.
    config = parse_config("[charge.own]\nbalancing_cell_voltage = 3.30\n")
    assert config.charge.own.balancing_cell_voltage < min(config.charge.own.charge_cell_voltage)


def test_rule_tripped_by_a_default_says_so() -> None:
    issue = only_error("[freshness]\nstale_after = 200\n")
    assert issue.key == "freshness.stale_after_idle"
    assert issue.value == 120.0
    assert "default" in issue.message


def test_several_errors_are_reported_at_once() -> None:
    errors = errors_of(
        """\
        [service]
        tick_interval = 0
        [freshness]
        stale_after = 10
        stale_after_idle = 5
        on_pack_lost = "panic"
        [charge.own]
        cell_charge_factors = [0.2, 1, 1, 0.1]
        max_cel_voltage = 3.5
        """
    )
    assert len(errors) == 5
    assert {e.key for e in errors} == {
        "service.tick_interval",
        "freshness.stale_after_idle",
        "freshness.on_pack_lost",
        "charge.own.max_cel_voltage",
        "charge.own.cell_charge_factors",
    }


def test_one_bad_table_reports_both_of_its_lists() -> None:
    errors = errors_of("[charge.own]\ncell_discharge_voltages = [3.0]\ncell_discharge_factors = [1.0]\n")
    assert {e.key for e in errors} == {"charge.own.cell_discharge_voltages", "charge.own.cell_discharge_factors"}


def test_issues_carry_the_line_of_the_key() -> None:
    errors = errors_of("# header\n\n[freshness]\nreadmit_after = -1\n\n[service]\ndebounce = 1\n")
    assert {(e.key, e.line) for e in errors} == {("freshness.readmit_after", 4), ("service.debounce", 7)}


def test_report_lists_every_issue_with_file_line_value_and_reason() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("[service]\ndebounce = 1\ntick_interval = -2\n", "my.toml")
    report = str(caught.value)
    assert report.splitlines()[0] == "my.toml: 2 configuration errors"
    assert "my.toml:2: service.debounce = 1" in report
    assert "my.toml:3: service.tick_interval = -2" in report
    assert report.count("allowed: ") == 2


# --- file-level problems ---------------------------------------------------------------------------


def test_toml_syntax_error_gives_file_and_line() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("[service]\ntick_interval = 1\ndebounce = = 0.1\n", "broken.toml")
    (issue,) = caught.value.errors
    assert issue.line == 3
    assert "TOML syntax error" in issue.message
    assert "broken.toml:3:" in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert str(missing) in str(caught.value)
    assert "cannot read" in str(caught.value)


def test_binary_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.toml"
    path.write_bytes(b"[service]\n\xff\xfe\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.errors[0].line == 2


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeff[service]\ntick_interval = 2\n".encode())
    assert load_config(path).service.tick_interval == 2.0


@pytest.mark.skipif(sys.version_info < (3, 11),
                    reason="on 3.10 tomli is the only path, and every config test runs through it")
def test_tomli_fallback_is_used_without_tomllib() -> None:
    script = textwrap.dedent(
        """
        import sys, types, tomllib
        backport = types.ModuleType("tomli")
        backport.loads = tomllib.loads
        backport.TOMLDecodeError = tomllib.TOMLDecodeError
        sys.modules["tomli"] = backport
        sys.modules["tomllib"] = None  # as on Python 3.10
        import pydantic  # before the version is faked: only the loader's own choice is under test
        real_version, sys.version_info = sys.version_info, (3, 10, 0, "final", 0)
        import aggbatt.config as config
        sys.version_info = real_version
        import aggbatt.config.loader as loader
        assert loader.tomllib is backport
        assert config.parse_config("[service]\\ntick_interval = 3").service.tick_interval == 3.0
        try:
            config.parse_config("x = = 1")
        except config.ConfigError as exc:
            assert exc.errors[0].line == 1
        else:
            raise AssertionError("syntax error not reported")
        print("fallback ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "fallback ok" in result.stdout


# --- files that are not configs: bounded, never a traceback ----------------------------------------

MALFORMED = {
    "integer with too many digits": "[service]\ndevice_instance = " + "9" * 5000 + "\n",
    "arrays nested past the parser's stack": "[discovery]\ninclude = " + "[" * 3000 + "]" * 3000 + "\n",
    "arrays nested past the nesting bound": "[discovery]\ninclude = " + "[" * 40 + "]" * 40 + "\n",
    "inline tables nested deeply": "x = " + "{a = " * 40 + "1" + "}" * 40 + "\n",
    "larger than the size bound": "# padding\n" * 200_000,
}


@pytest.mark.parametrize("text", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_file_is_reported_and_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    path = write(tmp_path, text)
    assert cli.main(["check-config", path]) == 2
    err = capsys.readouterr().err
    assert f"{path}: 1 configuration error" in err
    assert "Traceback" not in err


def test_huge_device_instance_is_refused() -> None:
    for value in ("99999999999999999999", "65536", "-1"):
        with pytest.raises(ConfigError) as caught:
            parse_config(f"[service]\ndevice_instance = {value}\n")
        assert caught.value.errors[0].key == "service.device_instance"
    assert parse_config("[service]\ndevice_instance = 65535\n").service.device_instance == 65535


def test_service_name_longer_than_dbus_allows_is_refused() -> None:
    # The daemon could never claim it: check-config must say so, not the start.
    with pytest.raises(ConfigError) as caught:
        parse_config('[service]\nname = "com.victronenergy.battery.' + "a" * 250 + '"\n')
    assert caught.value.errors[0].key == "service.name"


@pytest.mark.parametrize("kind", ["char device", "fifo", "directory"])
def test_check_config_of_something_not_a_file_exits_2_without_reading(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    # /dev/zero never ends and a FIFO without a writer blocks: both must be refused unread.
    if kind == "char device":
        path = "/dev/zero"
    elif kind == "fifo":
        path = str(tmp_path / "fifo")
        os.mkfifo(path)
    else:
        path = str(tmp_path)
    assert cli.main(["check-config", path]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_reload_of_a_malformed_file_logs_one_line_and_keeps_running(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aggbatt")
    for name, text in MALFORMED.items():
        path = write(tmp_path, text)
        caplog.clear()
        assert read_config(path) is None, name
        records = [r for r in caplog.records if r.name.startswith("aggbatt")]
        assert len(records) == 1, (name, [r.getMessage()[:200] for r in records])
        assert records[0].exc_info is None
        assert "keeping the running configuration" in records[0].getMessage()


# --- invalid input never crashes -------------------------------------------------------------------

_NAMES = sorted({part for key in model_leaf_fields(Config) for part in key.split(".")} | {"x", "Soc"})
_SCALARS = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.datetimes()
    | st.none()
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_NAMES), inner, max_size=4),
    max_leaves=12,
)
_SECTIONS = st.dictionaries(
    st.sampled_from(list(Config.model_fields) + ["x"]),
    st.dictionaries(st.sampled_from(_NAMES), _VALUES, max_size=5) | _SCALARS,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(_SECTIONS)
def test_any_document_gives_a_config_or_a_config_error(document: dict[str, Any]) -> None:
    try:
        config_from_dict(document)
    except ConfigError as exc:
        assert exc.errors
        for issue in exc.errors:
            assert issue.key and issue.message
        assert str(exc).startswith("<dict>: ")


# --- command line ----------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[soc]\nstrategy = \"coulomb_counter\"\n")
    assert cli.main(["check-config", path]) == 0
    out = capsys.readouterr().out
    assert "config OK" in out and "coulomb_counter" in out


def test_check_config_lists_every_error_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path,
        """\
        [service]
        tick_interval = 20
        [freshness]
        stale_after = "10"
        [charge.own]
        cell_charge_factors = [0.2, 1.0]
        """,
    )
    assert cli.main(["check-config", path]) == 2
    captured = capsys.readouterr()
    assert "config OK" not in captured.out
    assert "3 configuration errors" in captured.err
    for line, key in [(2, "service.tick_interval"), (4, "freshness.stale_after"),
                      (6, "charge.own.cell_charge_factors")]:
        assert f"{path}:{line}: {key} = " in captured.err


def test_check_config_syntax_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[service\n")
    assert cli.main(["check-config", path]) == 2
    assert f"{path}:1: TOML syntax error" in capsys.readouterr().err


def test_cli_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main([])
    assert caught.value.code == 2


def test_check_config_as_a_module(tmp_path: Path) -> None:
    bad = write(tmp_path, "[logging]\nlevel = \"verbose\"\n")
    result = subprocess.run(
        [sys.executable, "-m", "aggbatt.cli", "check-config", bad], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "logging.level" in result.stderr
    good = subprocess.run(
        [sys.executable, "-m", "aggbatt.cli", "check-config", str(REPO / "config" / "lto.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert good.returncode == 0, good.stderr
    assert "config OK" in good.stdout


def test_importing_the_cli_does_not_import_pydantic() -> None:
    script = "import sys, aggbatt.cli; print(sorted(m for m in sys.modules if m.startswith(('pydantic', 'dbus_fast'))))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
