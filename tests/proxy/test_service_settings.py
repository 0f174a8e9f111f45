"""Settings: defaults, INVERTORNOT_* variables, `invertornot serve` flags, and the README table."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from proxy.cli import build_parser
from proxy.settings import Settings, add_arguments, setting_specs, settings_markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def parse_serve(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_every_field_has_help_a_flag_and_an_env_var() -> None:
    fields = dataclasses.fields(Settings)
    specs = setting_specs()
    assert [spec.name for spec in specs] == [item.name for item in fields]
    for spec in specs:
        assert len(spec.help) > 10, spec.name
        assert spec.env == "INVERTORNOT_" + spec.name.upper()
    serve = next(
        action.choices["serve"] for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)
    )
    flags = {option for action in serve._actions for option in action.option_strings}
    assert {spec.flag for spec in specs} <= flags


def test_defaults_environment_and_flags_in_that_order() -> None:
    assert Settings.from_args(parse_serve(), environ={}) == Settings()
    environ = {
        "INVERTORNOT_PORT": "9000",
        "INVERTORNOT_ALLOW_PRIVATE_NETWORKS": "yes",
        "INVERTORNOT_ALLOWED_NETWORKS": "10.0.0.0/8, 192.168.0.0/16",
        "INVERTORNOT_MODEL": "/models/m1",
        "INVERTORNOT_BATCH_WAIT_MS": "1.5",
        "INVERTORNOT_MAX_IMAGE_BYTES": "1_000_000",
    }
    from_env = Settings.from_env(environ)
    assert from_env.port == 9000 and from_env.allow_private_networks is True
    assert from_env.allowed_networks == ("10.0.0.0/8", "192.168.0.0/16")
    assert from_env.model == Path("/models/m1") and from_env.batch_wait_ms == 1.5
    assert from_env.max_image_bytes == 1_000_000
    args = parse_serve("--port", "9100", "--no-allow-private-networks", "--model", "", "--host", "0.0.0.0")
    combined = Settings.from_args(args, environ=environ)
    assert (combined.port, combined.allow_private_networks, combined.model, combined.host) == (
        9100,
        False,
        None,
        "0.0.0.0",
    )
    assert combined.batch_wait_ms == 1.5  # not given as a flag: the environment still applies


@pytest.mark.parametrize(
    "environ",
    [
        {"INVERTORNOT_PORT": "eighty"},
        {"INVERTORNOT_ALLOW_PRIVATE_NETWORKS": "maybe"},
        {"INVERTORNOT_BATCH_SIZE": "0"},
        {"INVERTORNOT_TOTAL_TIMEOUT": "-1"},
        {"INVERTORNOT_ALLOWED_NETWORKS": "10.0.0.0/33"},
        {"INVERTORNOT_LOG_LEVEL": "chatty"},
    ],
)
def test_bad_values_fail_at_startup_with_the_variable_named(environ: dict[str, str]) -> None:
    variable = next(iter(environ))
    with pytest.raises(ValueError) as caught:
        Settings.from_env(environ)
    message = str(caught.value)
    assert variable in message or variable.removeprefix("INVERTORNOT_").lower() in message


def test_bad_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="serve")
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--port", "eighty"])
    assert "--port" in capsys.readouterr().err


def test_fetch_policy_carries_the_fetch_settings() -> None:
    policy = Settings(connect_timeout=1.5, max_image_bytes=1234, allow_private_networks=True).fetch_policy()
    assert (policy.connect_timeout, policy.max_image_bytes, policy.allow_private_networks) == (1.5, 1234, True)


def test_markdown_table_lists_every_setting() -> None:
    table = settings_markdown_table()
    for spec in setting_specs():
        assert f"`{spec.flag}`" in table and f"`{spec.env}`" in table
    assert table.count("\n") == len(setting_specs()) + 2


def test_readme_documents_every_setting() -> None:
    readme = README.read_text()
    missing = [spec.flag for spec in setting_specs() if spec.flag not in readme or spec.env not in readme]
    assert not missing, f"README.md does not document {missing}; paste settings_markdown_table() into it"


def test_thread_settings_resolve_zero_from_the_usable_cores() -> None:
    import os

    cores = len(os.sched_getaffinity(0))
    auto = Settings()
    assert (auto.classification_threads(), auto.onnx_threads()) == (cores, 1)
    one = Settings(executor_threads=1)
    assert (one.classification_threads(), one.onnx_threads()) == (1, cores)
    pinned = Settings(executor_threads=3, inference_threads=2)
    assert (pinned.classification_threads(), pinned.onnx_threads()) == (3, 2)
    with pytest.raises(ValueError, match="executor_threads"):
        Settings(executor_threads=-1)
