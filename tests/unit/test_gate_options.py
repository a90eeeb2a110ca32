"""The load test's gate options: declared once, the same for the locustfile and the runner."""

from __future__ import annotations

import argparse
from pathlib import Path

import configargparse
import pytest

from loadtests import run
from loadtests.gate_options import GATE_OPTIONS, add_gate_options, gate_arguments


def test_the_runner_passes_every_gate_option_on_with_the_same_defaults(tmp_path):
    args = run.build_parser().parse_args([])
    command = run.locust_command(args, "http://127.0.0.1:1", tmp_path, "users.txt")
    for option in GATE_OPTIONS:
        assert option.flag in command
        if option.runner and option.dest != "users_file":
            assert getattr(args, option.dest) == option.default
    assert command[command.index("--user-rate") + 1] == "4"
    assert command[command.index("--users-file") + 1] == "users.txt"
    assert Path(command[command.index("--verdict-file") + 1]) == tmp_path / "verdict.json"
    assert command[command.index("--run-time") + 1] == "60s"  # the constant shape's default


def test_the_run_time_handed_to_locust_is_whole_seconds(tmp_path):
    args = run.build_parser().parse_args(["--duration", "1m30s"])
    command = run.locust_command(args, "http://127.0.0.1:1", tmp_path, None)
    assert command[command.index("--run-time") + 1] == "90s"
    assert "--users-file" not in command  # none known: the locustfile's default ids


def test_locust_reads_each_option_from_its_environment_variable(monkeypatch):
    monkeypatch.setenv("RECSYS_LOADTEST_USER_RATE", "2.5")
    monkeypatch.setenv("RECSYS_SLO_FILE", "/etc/recsys/slo.json")
    parser = configargparse.ArgumentParser()
    add_gate_options(parser)
    options = parser.parse_args([])
    assert options.user_rate == 2.5
    assert options.slo_file == "/etc/recsys/slo.json"
    assert options.shape == "constant"


def test_unset_options_are_left_out_and_choices_are_checked():
    assert gate_arguments(argparse.Namespace(), shape="step") == ["--shape", "step"]
    parser = argparse.ArgumentParser()
    add_gate_options(parser, runner=True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--shape", "ramp"])
    assert "--verdict-file" not in parser.format_help()  # the runner writes <--out>/verdict.json
