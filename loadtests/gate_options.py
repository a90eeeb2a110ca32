"""The load test's gate options, declared once for the locustfile and `python -m loadtests.run`.

The locustfile adds them to Locust's parser (each also read from its RECSYS_* variable: the
chart's Job); the runner adds the same ones to its own parser and hands the parsed values on to
Locust. One flag, one type, one default, one help text. Standard library only (see
gate_checks.py for why).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from loadtests.load_shapes import SHAPES
except ImportError:  # the chart's Job: this directory, flat (a constant: either copy will do)
    from load_shapes import SHAPES

MIN_RPS_MODES = ("auto", "enforce", "report")
_REPO_SLO_FILE = Path(__file__).resolve().parent.parent / "slo.yaml"
# In the chart's Job the SLO file comes from RECSYS_SLO_FILE; elsewhere the repository's.
DEFAULT_SLO_FILE = str(_REPO_SLO_FILE) if _REPO_SLO_FILE.exists() else "slo.yaml"


@dataclass(frozen=True)
class GateOption:
    """One command-line option of the gate."""

    flag: str
    help: str
    default: Any
    env_var: str
    type: Callable[[str], Any] = str
    choices: Sequence[str] | None = None
    runner: bool = True  # also an option of `python -m loadtests.run` (else Locust only)

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


# The defaults are the CI gate: 30 users x 4 req/s = 120 req/s, paced, constant shape.
GATE_OPTIONS = (
    GateOption(
        "--shape",
        "Load shape: constant (CI), step (capacity search), spike or soak.",
        "constant",
        "RECSYS_LOADTEST_SHAPE",
        choices=SHAPES,
    ),
    GateOption(
        "--steps",
        "Number of equal user increments of the step shape.",
        5,
        "RECSYS_LOADTEST_STEPS",
        int,
    ),
    GateOption(
        "--user-rate",
        "Requests per second each simulated user sends; 0 = as fast as answered (closed "
        "loop). Offered load = users x user rate.",
        4.0,
        "RECSYS_LOADTEST_USER_RATE",
        float,
    ),
    GateOption(
        "--warmup",
        "Seconds at the start left out of the verdict and of early aborts.",
        10.0,
        "RECSYS_LOADTEST_WARMUP",
        float,
    ),
    GateOption(
        "--window",
        "Seconds per window of the early-abort check.",
        10.0,
        "RECSYS_LOADTEST_WINDOW",
        float,
    ),
    GateOption(
        "--abort-after",
        "Stop the run when the same breach lasts this many windows (0: never).",
        3,
        "RECSYS_LOADTEST_ABORT_AFTER",
        int,
    ),
    GateOption(
        "--min-rps-check",
        "Throughput floors: auto checks those the offered load reaches (all when unpaced), "
        "enforce checks all, report checks none.",
        "auto",
        "RECSYS_LOADTEST_MIN_RPS_CHECK",
        choices=MIN_RPS_MODES,
    ),
    GateOption(
        "--slo-file",
        "SLO file whose endpoint thresholds gate the run (YAML, or the chart's JSON).",
        DEFAULT_SLO_FILE,
        "RECSYS_SLO_FILE",
    ),
    GateOption(
        "--users-file",
        "Known user ids, one per line (default: the stored retrieval model's users when "
        "the runner starts the local stack, else u0..u19999).",
        "",
        "RECSYS_LOADTEST_USERS",
    ),
    GateOption(
        "--verdict-file",
        "Where the JSON verdict is written (the runner: <--out>/verdict.json).",
        "/tmp/recsys-loadtest/verdict.json",
        "RECSYS_LOADTEST_VERDICT",
        runner=False,
    ),
)


def add_gate_options(parser: Any, runner: bool = False) -> None:
    """Add the gate's options to an argparse parser (or group).

    Args:
        parser: Locust's parser group (configargparse, which reads `env_var`), or the runner's.
        runner: the runner's parser: only the options it takes, without environment variables.
    """
    for option in GATE_OPTIONS:
        if runner and not option.runner:
            continue
        kwargs: dict[str, Any] = {"default": option.default, "type": option.type}
        if option.choices:
            kwargs["choices"] = option.choices
        if not runner:
            kwargs["env_var"] = option.env_var
        shown = f" (default: {option.default})" if option.default != "" else ""
        parser.add_argument(option.flag, help=option.help + shown, **kwargs)


def gate_arguments(values: Any, **overrides: Any) -> list[str]:
    """The gate options of a parsed namespace as Locust arguments (unset ones left out).

    Args:
        values: the runner's parsed arguments.
        overrides: dest -> value replacing the parsed one (e.g. users_file, verdict_file).
    """
    arguments: list[str] = []
    for option in GATE_OPTIONS:
        value = overrides.get(option.dest, getattr(values, option.dest, None))
        if value is None or value == "":
            continue
        text = f"{value:g}" if isinstance(value, float) else str(value)
        arguments += [option.flag, text]
    return arguments
