"""The command line, end to end: ``python -m bayeslmm fit | summary | compare`` and its error exits.

Every command runs in a fresh interpreter (as a user runs it); independent ones run concurrently,
since most of each run is importing PyMC.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bayeslmm import load, load_dataset
from bayeslmm.io import cli

SMALL = ["--draws", "200", "--tune", "200", "--chains", "2", "--seed", "3"]
SLOPES = "Reaction ~ Days + (Days | Subject)"
INTERCEPTS = "Reaction ~ Days + (1 | Subject)"


def _start(*args: str, cwd: Path) -> subprocess.Popen:
    env = os.environ | {"CI": "true"}  # no progress bar in the captured output
    return subprocess.Popen(
        [sys.executable, "-m", "bayeslmm", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )


def _run_all(commands: dict[str, list[str]], cwd: Path) -> dict[str, subprocess.CompletedProcess]:
    """Run several commands at once; wait for all of them."""
    started = {name: _start(*args, cwd=cwd) for name, args in commands.items()}
    done = {}
    for name, process in started.items():
        out, err = process.communicate(timeout=120)
        done[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    sleep = load_dataset("sleepstudy")
    sleep.to_csv(folder / "sleep.csv", index=False)
    sleep.to_parquet(folder / "sleep.parquet")
    (folder / "garbage.csv").write_bytes(bytes(range(256)) * 4)
    return folder


# Input errors: each checked in-process (cli.main returns the exit status), and two of them also in a
# fresh interpreter, started with the fits, to see the process exit status and a stderr without traceback.
ERRORS = {
    "missing file": (["fit", INTERCEPTS, "nope.csv"], "'nope.csv' not found"),
    "unreadable csv": (["fit", INTERCEPTS, "garbage.csv"], "cannot read 'garbage.csv' as CSV"),
    "bad formula": (["fit", "Reaction ~ Days + (1 | Subject", "sleep.csv"], "unbalanced parentheses"),
    "unknown column": (["fit", "Reaction ~ Dayz + (1 | Subject)", "sleep.csv"], "did you mean 'Days'?"),
    "unknown family": (["fit", INTERCEPTS, "sleep.csv", "--family", "weibull"], "'weibull'"),
    "counts that are not counts": (["fit", INTERCEPTS, "sleep.csv", "--family", "poisson"], "whole numbers"),
    "missing result": (["summary", "nothing.zarr"], "no saved result at 'nothing.zarr'"),
    "not a result": (["summary", "sleep.csv"], "must end in .zarr"),
    "bad save path": (["fit", INTERCEPTS, "sleep.csv", "--save", "out.pkl"], "must end in .zarr"),
}
IN_SUBPROCESS = ("missing file", "bad formula")


@pytest.fixture(scope="module")
def fits(workdir) -> dict[str, subprocess.CompletedProcess]:
    return _run_all(
        {
            "slopes": ["fit", SLOPES, "sleep.csv", *SMALL, "--save", "slopes.zarr"],
            "intercepts": ["fit", INTERCEPTS, "sleep.parquet", *SMALL, "--save", "intercepts.zarr"],
        }
        | {case: ERRORS[case][0] for case in IN_SUBPROCESS},
        workdir,
    )


@pytest.fixture(scope="module")
def reads(workdir, fits) -> dict[str, subprocess.CompletedProcess]:
    return _run_all(
        {"summary": ["summary", "slopes.zarr"], "compare": ["compare", "slopes.zarr", "intercepts.zarr"]}, workdir
    )


def test_fit_prints_the_summary_and_saves(fits, workdir):
    for name, formula in (("slopes", SLOPES), ("intercepts", INTERCEPTS)):
        result = fits[name]
        assert result.returncode == 0, result.stderr
        assert f"Formula: {formula}" in result.stdout
        assert "Fixed effects" in result.stdout and "Diagnostics:" in result.stdout
        assert f"Saved to {name}.zarr" in result.stdout
        assert "Traceback" not in result.stderr
        assert "ConvergenceWarning" not in result.stderr  # the summary lists diagnostics already
    model = load(workdir / "slopes.zarr")
    assert model.formula == SLOPES and model.sampler.draws == 200 and model.sampler.chains == 2
    assert model.sampler.random_seed == 3


def test_summary_of_a_saved_result_is_the_printed_one(fits, reads):
    result = reads["summary"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == fits["slopes"].stdout.split("\n\nSaved to")[0].strip()


def test_compare_ranks_the_saved_models(reads):
    result = reads["compare"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Model comparison by PSIS-LOO" in out and "<- best" in out
    assert SLOPES in out and INTERCEPTS in out
    best_row = next(line for line in out.splitlines() if line.rstrip().endswith("<- best"))
    label = best_row.split()[0]
    assert f"{label}: {SLOPES}" in out  # the random-slopes model predicts better on sleepstudy


def _assert_one_line_error(code: int, out: str, err: str, expected: str) -> None:
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bayeslmm: error: ")
    assert expected in lines[0]


@pytest.mark.parametrize("case", list(ERRORS))
def test_input_errors_exit_2_with_one_line(case, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    args, expected = ERRORS[case]
    code = cli.main(args)
    captured = capsys.readouterr()
    _assert_one_line_error(code, captured.out, captured.err, expected)


@pytest.mark.parametrize("case", IN_SUBPROCESS)
def test_input_errors_in_a_fresh_process(fits, case):
    result = fits[case]
    _assert_one_line_error(result.returncode, result.stdout, result.stderr, ERRORS[case][1])


def test_usage_errors_and_help(capsys):
    assert cli.main(["fit", INTERCEPTS, "sleep.csv", "--draws", "0"]) == 2
    assert "must be a positive integer" in capsys.readouterr().err
    assert cli.main([]) == 2
    assert cli.main(["compare", "one.zarr"]) == 2
    assert "two or more" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("fit", "summary", "compare"))
    assert cli.main(["fit", "--help"]) == 0
    assert "--save PATH" in capsys.readouterr().out


def test_read_data_by_suffix_or_name(workdir, tmp_path):
    csv = cli.read_data(str(workdir / "sleep.csv"))
    pd.testing.assert_frame_equal(cli.read_data(str(workdir / "sleep.parquet")), csv)
    csv.to_csv(tmp_path / "sleep.tsv", sep="\t", index=False)
    pd.testing.assert_frame_equal(cli.read_data(str(tmp_path / "sleep.tsv")), csv)
    pd.testing.assert_frame_equal(cli.read_data("sleepstudy"), load_dataset("sleepstudy"))
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(cli.InputError, match="suffix"):
        cli.read_data(str(tmp_path / "data.xlsx"))


def test_unexpected_failures_exit_1(workdir, monkeypatch, capsys):
    def broken(self, *args, **kwargs):
        raise RuntimeError("sampler exploded\nlong details")

    monkeypatch.setattr("bayeslmm.lmer.Lmer.fit", broken)
    code = cli.main(["fit", INTERCEPTS, str(workdir / "sleep.csv")])
    assert code == 1
    assert capsys.readouterr().err == "bayeslmm: error: RuntimeError: sampler exploded\n"


def test_compile_command_reports_each_engine(capsys):
    assert cli.main(["compile"]) == 0
    out = capsys.readouterr().out
    assert "collapsed Gaussian sampler:" in out and "GLMM sampler:" in out and " s" in out
    assert "bytecode:" in out


def test_compile_writes_current_bytecode_for_every_module():
    """``bayeslmm compile`` leaves a .pyc for each module that matches its source as importlib checks it
    (source mtime and size in the header, or the source's hash where SOURCE_DATE_EPOCH asks for
    hash-based files), so no process compiles the package from source again."""
    import importlib.util
    import struct

    import bayeslmm
    from bayeslmm.engines.compiled import compile_bytecode

    assert compile_bytecode()
    sources = sorted(Path(bayeslmm.__file__).parent.rglob("*.py"))
    assert len(sources) > 40
    for source in sources:
        header = Path(importlib.util.cache_from_source(str(source))).read_bytes()[:16]
        assert header[:4] == importlib.util.MAGIC_NUMBER, source
        (flags,) = struct.unpack("<I", header[4:8])
        if flags == 0:
            stat = source.stat()
            assert struct.unpack("<2I", header[8:16]) == (int(stat.st_mtime) & 0xFFFFFFFF, stat.st_size & 0xFFFFFFFF), source
        else:
            assert header[8:16] == importlib.util.source_hash(source.read_bytes()), source
