"""Archive: the file format of a saved fitted model, written and read back into its parts.

A saved result is the model's ArviZ ``xarray.DataTree`` (``posterior``, ``sample_stats``,
``observed_data``, ``log_likelihood``, ... as they are) written with xarray, plus two things that let
:func:`bayeslmm.load` rebuild the model around it:

- the group ``bayeslmm_data``: the model's data (the rows used, every column, the caller's index) as
  an Arrow IPC stream in a ``uint8`` array, because Arrow keeps pandas dtypes (integers, nullable
  integers, categoricals with their categories and order, strings, datetimes) exactly -- Parquet, for
  one, turns categoricals of numbers back into plain numbers;
- the root attribute ``bayeslmm``: one JSON string with the format version, the class, formula,
  family, the prior overrides as given, the class's other constructor arguments, the sampler
  settings, the diagnostics warnings and the number of rows dropped for missing values.

:func:`read` gives these parts back; :func:`bayeslmm.io.storage.load` re-runs formula -> design on the
saved data (deterministic), resolves the priors again and attaches the saved draws, so every table
(``coefs``, ``ranef``, ``data``, ...) is recomputed from the same numbers and equals the original exactly.

Two containers, chosen by the suffix: ``.zarr`` (a directory; Zarr ships with bayeslmm's
dependencies) and ``.nc`` (one NetCDF-4 file; needs ``h5netcdf`` or ``netCDF4``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from bayeslmm import __version__
from bayeslmm.engines.sampling import SamplerSettings
from bayeslmm.errors import NotFittedError, ResultFileError
from bayeslmm.spec.priors import Prior

if TYPE_CHECKING:
    from bayeslmm.results.fitted import FittedModel

__all__ = ["save", "read", "Archive", "check_save_path", "FORMAT_VERSION", "SUFFIXES", "SAVABLE"]

#: Version of the layout below; :func:`read` refuses files written by a newer one.
FORMAT_VERSION = 2
#: The classes whose fitted models can be saved.
SAVABLE = ("Lmer", "Lm", "Lm2")
SUFFIXES = (".zarr", ".nc")
_META = "bayeslmm"
_DATA_GROUP = "bayeslmm_data"
# Zarr 3 warns that consolidated metadata is not in its spec yet; xarray writes and reads it anyway
_ZARR_NOISE = "Consolidated metadata is currently not part"


# ------------------------------------------------------------------------------------------ save
def save(model: "FittedModel", path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write a fitted :class:`~bayeslmm.Lmer` (or :class:`~bayeslmm.Lm`, :class:`~bayeslmm.Lm2`) to ``path``.

    Parameters
    ----------
    model : FittedModel
        A fitted model.
    path : str or path-like
        Ending in ``.zarr`` or ``.nc``.
    overwrite : bool
        Replace an existing bayeslmm result at ``path``. Other files or directories are never replaced.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    NotFittedError
        ``model`` is not fitted.
    ResultFileError
        The suffix is neither ``.zarr`` nor ``.nc``, the model is of a kind that cannot be saved, or
        its data cannot be stored (Arrow needs one type per column and string column names).
    FileExistsError
        ``path`` exists and ``overwrite`` is False or it is not a bayeslmm result.
    ImportError
        ``.nc`` without ``h5netcdf`` or ``netCDF4`` installed.
    """
    path = Path(path)
    kind = type(model).__name__
    if kind not in SAVABLE:
        raise ResultFileError(f"cannot save a {kind}: saving supports {', '.join(SAVABLE)}")
    if not model.fitted:
        raise NotFittedError(f"cannot save an unfitted {kind}: call .fit() first, then .save({str(path)!r})")
    engine = check_save_path(path, overwrite)
    tree = model.idata.copy()
    tree[_DATA_GROUP] = xr.DataTree(xr.Dataset({"arrow_ipc": ("byte", _frame_to_bytes(model.design.data))}))
    tree.attrs = {**model.idata.attrs, _META: json.dumps(_metadata(model))}
    _write(tree, path, engine)
    return path


def _engine(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".zarr":
        return "zarr"
    if suffix == ".nc":
        for engine in ("h5netcdf", "netcdf4"):
            if importlib.util.find_spec("netCDF4" if engine == "netcdf4" else engine):
                return engine
        raise ImportError(
            f"writing or reading {str(path)!r} (NetCDF-4) needs h5netcdf or netCDF4: "
            "`pip install h5netcdf`, or use a .zarr path, which works out of the box"
        )
    raise ResultFileError(
        f"{str(path)!r}: a bayeslmm result path must end in .zarr (a directory) or .nc (one NetCDF-4 file)"
    )


def check_save_path(path: str | os.PathLike, overwrite: bool = True) -> str:
    """Check, before anything is fitted, that :func:`save` can write to ``path``; return the engine.

    Raises
    ------
    ResultFileError, FileExistsError, ImportError
        As :func:`save`.
    """
    path = Path(path)
    engine = _engine(path)
    if path.exists():
        _check_target(path, overwrite)
    elif not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save to {str(path)!r}: directory {str(path.parent)!r} does not exist")
    return engine


def _check_target(path: Path, overwrite: bool) -> None:
    if not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it")
    if not _is_result(path):
        raise FileExistsError(f"{str(path)!r} exists and is not a bayeslmm result; refusing to replace it")


def _is_result(path: Path) -> bool:
    try:
        _read_metadata(_open(path), path)
    except (ResultFileError, ImportError):
        return False
    return True


def _metadata(model: "FittedModel") -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "bayeslmm_version": __version__,
        "class": type(model).__name__,
        "formula": model.formula,
        "family": model.family.name,
        "priors": {key: _encode_prior(value) for key, value in model.prior_overrides.items()},
        "arguments": {key: _encode_value(value) for key, value in model.init_arguments.items()},
        "sampler": dataclasses.asdict(model.sampler),
        "warnings": list(model.warnings),
        "n_dropped": int(model.design.n_dropped),
        "column_types": [type(column).__name__ for column in model.design.data.columns],
    }


def _encode_prior(value: Any) -> Any:
    if isinstance(value, Prior):
        return {"distribution": value.distribution, "params": {k: _encode_value(v) for k, v in value.params.items()}}
    return _encode_value(value)  # an LKJ eta


def _encode_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"ndarray": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bool | int | float | str | list | tuple) or value is None:
        return value
    if isinstance(value, dict) and "ndarray" not in value:  # Lmer's factors=: {column: levels or weights}
        return {key: _encode_value(item) for key, item in value.items()}
    raise ResultFileError(f"cannot save a prior parameter of type {type(value).__name__}: {value!r}")


def _frame_to_bytes(frame: pd.DataFrame) -> np.ndarray:
    import pyarrow as pa  # a dependency of nutpie, so always there

    try:
        table = pa.Table.from_pandas(frame, preserve_index=True)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise ResultFileError(
            f"cannot store the model's data (Arrow): {exc}; give every column one type and a string name"
        ) from None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return np.frombuffer(sink.getvalue().to_pybytes(), dtype=np.uint8)


def _write(tree: xr.DataTree, path: Path, engine: str) -> None:
    # write next to the target and swap at the end: a failed save never leaves half a result behind
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        _write_to(tree, path, temporary, engine)
    finally:
        _remove(temporary)


def _write_to(tree: xr.DataTree, path: Path, temporary: Path, engine: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_ZARR_NOISE)
            if engine == "zarr":
                tree.to_zarr(temporary, mode="w")
            else:
                tree.to_netcdf(temporary, engine=engine)
        _remove(path)
        temporary.rename(path)
    except OSError as exc:  # the temporary file's name is ours: report the user's path and the reason
        raise OSError(f"cannot write {str(path)!r}: {exc.strerror or type(exc).__name__}") from None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# ------------------------------------------------------------------------------------------ read
@dataclass(frozen=True)
class Archive:
    """What a saved result holds, ready to rebuild the model.

    Attributes
    ----------
    kind : str
        The class name (``"Lmer"``, ``"Lm"``, ``"Lm2"``).
    formula, family : str
    priors : dict
        The prior overrides as given.
    arguments : dict
        Other constructor arguments (``Lm2``'s ``group``).
    data : pandas.DataFrame
    idata : xarray.DataTree
    sampler : SamplerSettings
    warnings : list of str
    n_dropped : int
    """

    kind: str
    formula: str
    family: str
    priors: dict
    arguments: dict
    data: pd.DataFrame
    idata: xr.DataTree
    sampler: SamplerSettings
    warnings: list
    n_dropped: int


def read(path: str | os.PathLike) -> Archive:
    """Read a result written by :func:`save`.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    ResultFileError
        ``path`` is not a bayeslmm result (or was written by a newer bayeslmm).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no saved result at {str(path)!r}")
    tree = _open(path)
    meta = _read_metadata(tree, path)
    return Archive(
        kind=meta["class"],
        formula=meta["formula"],
        family=meta["family"],
        priors=_decode_priors(meta["priors"]),
        arguments={key: _decode_value(value) for key, value in meta.get("arguments", {}).items()},
        data=_restore_column_types(_bytes_to_frame(tree[_DATA_GROUP]["arrow_ipc"].values, path), meta.get("column_types")),
        idata=_model_tree(tree),
        sampler=SamplerSettings(**meta["sampler"]),
        warnings=list(meta["warnings"]),
        n_dropped=int(meta["n_dropped"]),
    )


def _open(path: Path) -> xr.DataTree:
    engine = _engine(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_ZARR_NOISE)
            tree = xr.open_datatree(path, engine=engine)
            tree.load()  # into memory, so the file is closed and can be replaced or deleted
    except Exception as exc:  # every backend has its own errors for a file it cannot read
        raise ResultFileError(
            f"{str(path)!r} is not a bayeslmm result (cannot read it as {engine}: {_first_line(exc)})"
        ) from None
    return tree


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _read_metadata(tree: xr.DataTree, path: Path) -> dict[str, Any]:
    if _META not in tree.attrs or _DATA_GROUP not in tree.children:
        raise ResultFileError(
            f"{str(path)!r} is not a bayeslmm result (it has no bayeslmm metadata); write one with model.save(path)"
        )
    try:
        meta = json.loads(tree.attrs[_META])
    except (TypeError, ValueError):
        raise ResultFileError(f"damaged bayeslmm result {str(path)!r}: its metadata is not valid JSON") from None
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ResultFileError(
            f"{str(path)!r}: result format version {version!r} is newer than this bayeslmm reads ({FORMAT_VERSION}); "
            "upgrade bayeslmm"
        )
    if meta.get("class") not in SAVABLE:
        raise ResultFileError(f"{str(path)!r} holds a {meta.get('class')!r}, which this bayeslmm cannot load")
    return meta


def _restore_column_types(frame: pd.DataFrame, types: list | None) -> pd.DataFrame:
    """Column names back to the types they had (Arrow stores them as text: an integer name 0 comes back "0")."""
    if not types or len(types) != frame.shape[1]:
        return frame
    casts = {"int": int, "float": float, "bool": lambda text: text == "True"}
    names = [casts[kind](name) if kind in casts else name for name, kind in zip(frame.columns, types)]
    return frame.set_axis(names, axis=1)


def _bytes_to_frame(values: np.ndarray, path: Path) -> pd.DataFrame:
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(np.asarray(values, dtype=np.uint8).tobytes()).read_all().to_pandas()
    except Exception as exc:  # pyarrow's errors for damaged bytes vary
        raise ResultFileError(f"damaged bayeslmm result {str(path)!r}: its data cannot be read ({exc})") from None


def _decode_priors(spec: dict[str, Any]) -> dict[str, Any]:
    return {key: _decode_prior(value) for key, value in spec.items()}


def _decode_prior(value: Any) -> Any:
    if isinstance(value, dict) and "distribution" in value:
        return Prior(value["distribution"], **{k: _decode_value(v) for k, v in value["params"].items()})
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict) and "ndarray" in value:
        return np.asarray(value["ndarray"], dtype=value["dtype"])
    return value


def _model_tree(tree: xr.DataTree) -> xr.DataTree:
    """The saved tree without what save() added: the model's ``idata`` as it was."""
    groups = {name: child.to_dataset() for name, child in tree.children.items() if name != _DATA_GROUP}
    idata = xr.DataTree.from_dict(groups)
    idata.attrs = {key: value for key, value in tree.attrs.items() if key != _META}
    return idata
