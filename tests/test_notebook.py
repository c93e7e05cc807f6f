"""The course notebook examples/lmm_course.ipynb runs top to bottom and teaches what it says.

The notebook is executed with nbclient in a fresh kernel that runs this interpreter
(``sys.executable``), with matplotlib's Agg backend. Its last cell prints one line
``COURSE_RESULTS {json}`` with the key numbers; the test checks Simpson's paradox (complete pooling
gives a positive slope, the mixed model a negative one) and the rankings of the LOO comparisons.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402  (installed with nbclient)
from jupyter_client.manager import KernelManager  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOK = EXAMPLES / "lmm_course.ipynb"
MARKER = "COURSE_RESULTS "
KERNEL_MARKER = "KERNEL_PYTHON"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    assert all(not cell.outputs and cell.execution_count is None for cell in code), (
        "store examples/lmm_course.ipynb without outputs (clear them before committing)"
    )


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook executed in a kernel running ``sys.executable``; (notebook, seconds)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(f"import sys\nprint({KERNEL_MARKER!r}, sys.executable)"))
    # A kernelspec of our own, in a temporary folder, that names this interpreter: the kernel runs
    # the environment under test whatever kernelspecs the machine has installed.
    kernels = tmp_path_factory.mktemp("kernels")
    spec = kernels / "bayeslmm-test"
    spec.mkdir()
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "bayeslmm test",
                "language": "python",
            }
        )
    )
    manager = KernelManager(
        kernel_name="bayeslmm-test", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)])
    )
    client = nbclient.NotebookClient(
        nb, km=manager, timeout=600, resources={"metadata": {"path": str(EXAMPLES)}}
    )
    env = dict(os.environ, MPLBACKEND="Agg", PYDEVD_DISABLE_FILE_VALIDATION="1")
    env.pop("CI", None)  # as a user's notebook: progress bars on, so that their output is checked too
    started = time.perf_counter()
    try:
        client.execute(env=env)
    except nbclient.exceptions.CellExecutionError:
        out = tmp_path_factory.mktemp("notebook") / "lmm_course.failed.ipynb"
        nbformat.write(nb, out)
        raise
    return nb, time.perf_counter() - started


def _printed(nb, marker: str) -> str:
    """The rest of the last printed line that starts with ``marker``."""
    for cell in reversed(nb.cells):
        if cell.cell_type != "code":
            continue
        for output in cell.outputs:
            if output.output_type == "stream" and output.name == "stdout":
                for line in output.text.splitlines():
                    if line.startswith(marker):
                        return line[len(marker):].strip()
    raise AssertionError(f"no line starting with {marker!r} in the notebook's output")


def _results(nb) -> dict:
    return json.loads(_printed(nb, MARKER))


def test_notebook_runs_without_errors(executed):
    nb, seconds = executed
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = sum("image/png" in out.get("data", {}) for out in outputs)
    assert images >= 9, f"expected the course's figures, got {images} images"
    assert Path(_printed(nb, KERNEL_MARKER)).resolve() == Path(sys.executable).resolve()
    assert seconds < 300, f"the notebook took {seconds:.0f} s; keep it under about 90 s"


_OBJECT_REPR = re.compile(r"<[\w.]+( object)? at 0x[0-9a-fA-F]+>")


def _texts(output) -> list[str]:
    """Every text an output shows: stream text, and each mime type's content of a display or result."""
    if output.output_type == "stream":
        return [output.text]
    if output.output_type in ("display_data", "execute_result"):
        return [value if isinstance(value, str) else json.dumps(value) for value in output.get("data", {}).values()]
    return []


def test_outputs_name_no_internal_object(executed):
    nb, _ = executed
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            for text in _texts(output):
                assert not _OBJECT_REPR.search(text), f"an object repr in the output of:\n{cell.source}\n{text[:300]}"
                for internal in ("IPython.core.display", "ipywidgets", "beta_centered", "NUTS["):
                    assert internal not in text, f"{internal!r} in the output of:\n{cell.source}"


def test_each_warning_is_shown_once(executed):
    nb, _ = executed
    for cell in nb.cells:
        warned = [
            line.split("Warning: ", 1)[1][:80]
            for output in cell.get("outputs", [])
            if output.output_type == "stream" and output.name == "stderr"
            for line in output.text.splitlines()
            if "Warning: " in line
        ]
        assert len(warned) == len(set(warned)), f"a warning repeated in:\n{cell.source}"
        others = " ".join(t for o in cell.get("outputs", []) if o.output_type != "stream" for t in _texts(o))
        for message in warned:
            assert message not in others, f"warning shown twice (also in a result) in:\n{cell.source}"


def test_fit_cells_show_a_progress_bar_and_what_they_ask_for(executed):
    nb, _ = executed
    fit_cells = [cell for cell in nb.cells if cell.cell_type == "code" and ".fit(" in cell.source]
    assert fit_cells
    for cell in fit_cells:
        bars = [o for o in cell.outputs if o.output_type == "display_data" and "bayeslmm-progress" in str(o.data)]
        assert bars, f"no progress bar in:\n{cell.source}"
        for bar in bars:
            assert re.match(r"[\w ,]+: \d+/\d+ \w+ \(\d+%\)", bar.data["text/plain"]), bar.data["text/plain"]
        errors = [o for o in cell.outputs if o.output_type == "stream" and o.name == "stderr"]
        assert not errors, f"stderr output in a fit cell:\n{cell.source}\n{errors[0].text[:300]}"


def test_simpsons_paradox_flips_the_sign(executed):
    simpson = _results(executed[0])["simpson"]
    low, high = simpson["complete_pooling_slope_ci"]
    assert simpson["complete_pooling_slope"] > 0 and low > 0
    low, high = simpson["partial_pooling_slope_ci"]
    assert simpson["partial_pooling_slope"] < 0 and high < 0


def test_model_comparison_ranking(executed):
    results = _results(executed[0])
    # Reaction ~ 1 + (1|Subject) vs Reaction ~ Days + (1|Subject): Days predicts far better.
    days = results["days_effect"]
    assert days["ranking"][0] == "Reaction ~ Days + (1 | Subject)"
    assert -days["elpd_diff"] > 4 * days["se_diff"]
    # (0 + Days|Subject) vs (1 + Days|Subject): the correlated intercepts and slopes win.
    structure = results["structure"]
    assert structure["ranking"][0] == "Reaction ~ Days + (Days | Subject)"
    assert -structure["elpd_diff"] > structure["se_diff"]
    assert results["all_models"][0] == "Reaction ~ Days + (Days | Subject)"
    assert results["all_models"][-1] == "Reaction ~ 1 + (1 | Subject)"
    # the posterior mean and the REML estimate of the Days slope agree
    assert abs(results["days_slope"] - results["reml_days_slope"]) < 0.5


def test_workflow_conclusions(executed):
    results = _results(executed[0])
    # the two-column lrt: lme4's likelihood-ratio tests of the course's pairs
    assert results["days_lrt"] == {"chisq": pytest.approx(116.46, abs=0.01), "df": 1}
    assert results["structure_lrt"] == {"chisq": pytest.approx(22.14, abs=0.01), "df": 2}
    # anova on cake: lmerTest's F tests; temperature matters, the recipe does not
    anova = results["anova"]
    assert anova["temperature"]["F"] == pytest.approx(20.5199, rel=1e-4) and anova["temperature"]["p"] < 1e-15
    assert anova["recipe"]["F"] == pytest.approx(0.24879, rel=1e-4) and anova["recipe"]["p"] > 0.7
    assert anova["temperature"]["elpd_diff"] > max(4, 2 * anova["temperature"]["se_diff"])
    assert anova["temperature"]["pd"] == 1.0 and anova["recipe"]["pd"] < 0.9
    # post-hoc: emmeans' Tukey p-values; the posterior intervals of the recipe differences cover 0
    contrasts = results["recipe_contrasts"]
    assert contrasts["A - B"]["p_tukey"] == pytest.approx(0.81999, abs=1e-4)
    assert all(c["low"] < 0 < c["high"] for c in contrasts.values())
    assert results["poly_linear"] > 5  # the linear trend of temperature (lme4: 6.61)
    # a prediction for a fitted driver is that driver's line
    assert results["prediction_308_day5"] == pytest.approx(results["fixef_308_day5"], rel=1e-10)
