"""Entry points: an expected user error is one line on stderr and a non-zero exit; CFCL_TRACEBACK=1 keeps the
traceback; unexpected errors keep it always."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cfcl import cli
from cfcl.config import SettingError
from cfcl.runs import ArtifactError, MissingRunError


def _bad_setting(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cfcl.finetune", "--profile", "smoke", "--method", "none",
                           "--set", "finetune.epochs=0"], capture_output=True, text=True, env=env, timeout=1800)


def test_a_bad_setting_is_one_line_and_the_traceback_is_an_option(tmp_path):
    env = {**os.environ, "CFCL_RUNS": str(tmp_path / "runs"), "CFCL_CACHE": str(tmp_path / "cache")}
    env.pop("CFCL_TRACEBACK", None)
    out = _bad_setting(env)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ") and "finetune.epochs" in lines[0]
    out = _bad_setting({**env, "CFCL_TRACEBACK": "1"})
    assert out.returncode != 0 and "Traceback (most recent call last)" in out.stderr
    assert "finetune.epochs" in out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.npz"))


@pytest.mark.parametrize("exc", [SettingError("setting x: bad\n  allowed: 1, 2"), KeyError("unknown profile 'z'"),
                                 ArtifactError("/r/model.pt is missing; remake it"),
                                 MissingRunError("no finished run; make it first with: make x"),
                                 FileNotFoundError("gold mask folder not found: /g")])
def test_expected_errors_exit_2_with_one_line(exc, capsys, monkeypatch):
    monkeypatch.delenv("CFCL_TRACEBACK", raising=False)

    @cli.entry_point
    def main():
        raise exc

    with pytest.raises(SystemExit) as done:
        main()
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "'unknown" not in err  # a KeyError's message without the quotes str() adds
    monkeypatch.setenv("CFCL_TRACEBACK", "1")
    with pytest.raises(type(exc)):
        main()


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    monkeypatch.delenv("CFCL_TRACEBACK", raising=False)

    @cli.entry_point
    def main():
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        main()


def test_the_shared_parser():
    args = cli.profile_parser("prog").parse_args(["--set", "seed=3", "--set", "finetune.epochs=2", "--variant", "v"])
    assert (args.profile, args.overrides, args.variant) == ("cpu", ["seed=3", "finetune.epochs=2"], "v")
    prof = cli.profile_of(cli.profile_parser("prog").parse_args(["--profile", "smoke", "--set", "seed=3",
                                                                 "--variant", "v"]))
    assert prof.name == "smoke" and prof.seed == 3 and prof.variant == "v"
