"""Command line: fit a model from a data file, print a saved result, compare saved results.

::

    bayeslmm fit "Reaction ~ Days + (Days | Subject)" sleepstudy.csv --save sleep.zarr
    bayeslmm summary sleep.zarr
    bayeslmm compare sleep.zarr sleep_intercepts.zarr

Mistakes in the input (a missing or unreadable file, a bad formula, an unknown column, a file that is
not a bayeslmm result) end with one line ``bayeslmm: error: ...`` on standard error and exit status 2,
as argparse does for bad arguments; any other failure exits with 1. Other warnings are printed as one line
``bayeslmm: warning: ...`` each; diagnostics warnings are not repeated, since the summary and the
comparison table list them.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bayeslmm.errors import (
    BayeslmmError,
    ConvergenceWarning,
    NotFittedError,
    ParetoKWarning,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["main", "build_parser", "read_data", "InputError", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE"]

EXIT_OK = 0
EXIT_FAILURE = 1  # anything unexpected
EXIT_USAGE = 2  # bad arguments or input, as argparse

_READERS = {".csv": "csv", ".tsv": "tsv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}


class InputError(Exception):
    """A problem with what the user gave: reported in one line, exit status 2."""


# ------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``bayeslmm`` argument parser with its ``fit``, ``summary`` and ``compare`` commands."""
    parser = argparse.ArgumentParser(
        prog="bayeslmm",
        description="Bayesian linear mixed models with lme4 formulas: fit, summarize and compare.",
        epilog="Run 'bayeslmm COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_fit(commands)
    _add_summary(commands)
    _add_compare(commands)
    _add_compile(commands)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bayeslmm")
    except PackageNotFoundError:
        return "unknown"


def _add_fit(commands) -> None:
    fit = commands.add_parser(
        "fit",
        help="fit a model to a data file and print its summary",
        description="Fit a Bayesian linear mixed model and print the summary (as Lmer(...).fit()).",
        epilog=(
            "Examples:\n"
            '  bayeslmm fit "Reaction ~ Days + (Days | Subject)" sleepstudy.csv\n'
            '  bayeslmm fit "Reaction ~ Days + (1 | Subject)" data.parquet --seed 1 --save m1.zarr\n'
            '  bayeslmm fit "Reaction ~ Days + (Days | Subject)" sleepstudy   # a shipped data set\n'
            '  bayeslmm fit "cbind(incidence, size - incidence) ~ period + (1 | herd)" cbpp --family binomial'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_argument("formula", help="lme4 formula, quoted, e.g. \"Reaction ~ Days + (Days | Subject)\"")
    fit.add_argument(
        "data",
        help="a .csv, .tsv or .parquet file, or the name of a shipped data set (sleepstudy, dyestuff, "
        "penicillin, cbpp, insteval, verbagg)",
    )
    fit.add_argument(
        "--family",
        default="gaussian",
        help="response family: gaussian (default), binomial, poisson or negbinomial",
    )
    fit.add_argument(
        "--link", default=None, help="link function if not the family's default: probit or cloglog for binomial"
    )
    fit.add_argument(
        "--weights",
        metavar="COLUMN",
        default=None,
        help="column of binomial trials for a proportion response (glmer's weights=)",
    )
    fit.add_argument(
        "--offset", metavar="COLUMN", default=None, help="column added to the linear predictor (glmer's offset=)"
    )
    fit.add_argument("--draws", type=_positive_int, default=1000, help="kept draws per chain (default: 1000)")
    fit.add_argument("--tune", type=_non_negative_int, default=1000, help="tuning steps per chain (default: 1000)")
    fit.add_argument("--chains", type=_positive_int, default=4, help="number of chains (default: 4)")
    fit.add_argument("--seed", type=int, default=None, help="random seed; the same seed gives the same draws")
    fit.add_argument(
        "--save", metavar="PATH", type=Path, help="write the fitted result to PATH (.zarr directory or .nc file)"
    )
    fit.add_argument(
        "--progressbar",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show the sampler's progress bar (default: when standard error is a terminal and CI is not set)",
    )
    fit.set_defaults(handler=_run_fit)


def _add_summary(commands) -> None:
    summary = commands.add_parser(
        "summary",
        help="print the summary of a saved result",
        description="Load a result written by 'bayeslmm fit --save' or model.save() and print its summary.",
    )
    summary.add_argument("path", type=Path, help="a saved result (.zarr or .nc)")
    summary.set_defaults(handler=_run_summary)


def _add_compare(commands) -> None:
    compare = commands.add_parser(
        "compare",
        help="compare saved results by PSIS-LOO",
        description=(
            "Compare two or more saved results fitted to the same observations by expected log "
            "predictive density (PSIS-LOO), as bayeslmm.lrt; prints the table with the best model marked."
        ),
    )
    compare.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="saved results (.zarr or .nc)")
    compare.add_argument(
        "--names", nargs="+", metavar="NAME", help="row labels, one per result (default: the formulas)"
    )
    compare.set_defaults(handler=_run_compare)


def _add_compile(commands) -> None:
    compile_ = commands.add_parser(
        "compile",
        help="compile the samplers' kernels once, so that the first fit starts at once",
        description=(
            "Compile bayeslmm's modules to bytecode and its numba kernels, cache the kernels on disk and "
            "link them into a native library (1-2 minutes, once per installation; scripts/bootstrap.sh "
            "does it). Without it the first fit compiles the kernels, and every fit imports numba to load them."
        ),
    )
    compile_.set_defaults(handler=_run_compile)


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or a positive integer, got {text!r}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


# ------------------------------------------------------------------------------------------- data
def read_data(source: str) -> "pd.DataFrame":
    """Read the data of ``bayeslmm fit``: a CSV/TSV/Parquet file by its suffix, or a shipped data set.

    Parameters
    ----------
    source : str
        A path ending in ``.csv``, ``.tsv``, ``.txt`` (comma-separated) or ``.parquet``/``.pq``, or a
        name accepted by :func:`bayeslmm.load_dataset` when no such file exists.

    Raises
    ------
    InputError
        The file does not exist, has another suffix, or cannot be parsed.
    """
    path = Path(source)
    if not path.exists():
        return _shipped_dataset(source)
    if path.is_dir():
        raise InputError(f"data {source!r} is a directory; give a .csv or .parquet file")
    kind = _READERS.get(path.suffix.lower())
    if kind is None:
        raise InputError(
            f"cannot tell the format of {source!r} from its suffix; use .csv, .tsv or .parquet"
        )
    return _read_file(path, kind)


def _shipped_dataset(source: str) -> "pd.DataFrame":
    from bayeslmm.datasets import list_datasets, load_dataset

    if Path(source).suffix or source.lower() not in list_datasets():
        raise InputError(
            f"data file {source!r} not found (nor is it a shipped data set: {', '.join(list_datasets())})"
        )
    return load_dataset(source)


def _read_file(path: Path, kind: str) -> "pd.DataFrame":
    import pandas as pd

    try:
        if kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t" if kind == "tsv" else ",")
    except Exception as exc:  # parsers raise many types (UnicodeDecodeError, ParserError, ArrowInvalid, ...)
        raise InputError(f"cannot read {str(path)!r} as {kind.upper()}: {_first_line(exc)}") from None
    if frame.shape[1] < 2:
        raise InputError(
            f"{str(path)!r} has {frame.shape[1]} column(s) when read as {kind.upper()}; "
            "is it the right file, with a header row and comma separators?"
        )
    return frame


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------- commands
def _run_fit(args: argparse.Namespace) -> int:
    from bayeslmm.io.storage import check_save_path
    from bayeslmm.models.lmer import Lmer

    if args.save is not None:
        check_save_path(args.save)  # fail before sampling, not after
    data = read_data(args.data)
    model = Lmer(args.formula, data, family=args.family, link=args.link, weights=args.weights, offset=args.offset)
    model.fit(
        draws=args.draws, tune=args.tune, chains=args.chains, random_seed=args.seed, progressbar=args.progressbar
    )
    print(model.summary())
    if args.save is not None:
        path = model.save(args.save)
        print(f"\nSaved to {path}")
    return EXIT_OK


def _run_summary(args: argparse.Namespace) -> int:
    from bayeslmm.io.storage import load

    print(load(args.path).summary())
    return EXIT_OK


def _run_compare(args: argparse.Namespace) -> int:
    from bayeslmm.analysis.comparison import lrt
    from bayeslmm.io.storage import load

    if len(args.paths) < 2:
        raise InputError("compare needs two or more saved results")
    if args.names is not None and len(args.names) != len(args.paths):
        raise InputError(f"--names needs {len(args.paths)} labels, one per result, got {len(args.names)}")
    models = [load(path) for path in args.paths]
    print(lrt(*models, names=args.names).to_text())
    return EXIT_OK


def _run_compile(args: argparse.Namespace) -> int:
    from bayeslmm.engines.compiled import compile_all

    print("compiling bayeslmm's kernels (once per installation) ...", flush=True)
    compile_all(report=lambda line: print(f"  {line}", flush=True))
    return EXIT_OK


# ------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bayeslmm`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        The exit status: 0 on success, 2 for bad arguments or input, 1 for other failures.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and argparse's own usage errors
        return int(exit_.code or 0)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        # the summary and the comparison table print these already, with advice
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", ParetoKWarning)
        try:
            return args.handler(args)
        except KeyboardInterrupt:
            _error("interrupted")
            return 130
        except Exception as exc:
            if _is_input_error(exc):
                _error(str(exc))
                return EXIT_USAGE
            # not the user's mistake: name the exception, so that a bug report says what failed
            _error(f"{type(exc).__name__}: {_first_line(exc)}")
            return EXIT_FAILURE


def _is_input_error(exc: BaseException) -> bool:
    if isinstance(exc, NotFittedError):
        return False
    return isinstance(exc, InputError | BayeslmmError | FileNotFoundError | FileExistsError | IsADirectoryError)


def _error(message: str) -> None:
    print(f"bayeslmm: error: {message}", file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # one line per warning: the source location Python prints points into bayeslmm, not at the user
    print(f"bayeslmm: warning: {message}", file=sys.stderr)
