"""Many fits at once: the executor (serial, local processes, Dask), power, fit_many, simulation, SBC.

Numbers that are exact are compared exactly: the same task with the same seed gives bit-identical
results serially, in local processes and on a 2-worker Dask LocalCluster started here. Monte Carlo
quantities are compared with tolerances of 4 Monte Carlo standard errors (a correct implementation
fails such a check about once in 16,000 runs).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bayeslmm import DataError, FormulaError, Lmer, Prior, UnsupportedSyntaxError, fit_many, load_dataset, power
from bayeslmm.analysis.calibration import simulation_based_calibration
from bayeslmm.analysis.comparison import kfold
from bayeslmm.analysis.pooling import compare_variance_components
from bayeslmm.engines.executor import run_tasks, spawn_seeds
from bayeslmm.spec.design import build_design
from bayeslmm.spec.formula import parse_formula
from bayeslmm.spec.simulate import TrueParameters, extend_data, extend_within, lkj_correlation, simulate_response

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"draws": 200, "tune": 200, "chains": 2}


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _between_design(groups: int = 12, per_group: int = 4) -> pd.DataFrame:
    """Balanced: ``groups`` groups of ``per_group`` rows, a between-group treatment x in half of them."""
    return pd.DataFrame({"g": np.repeat(np.arange(groups), per_group), "x": np.repeat(np.arange(groups) % 2, per_group).astype(float)})


@pytest.fixture(scope="module")
def sleep() -> pd.DataFrame:
    return load_dataset("sleepstudy")


@pytest.fixture(scope="module")
def slopes(sleep) -> Lmer:
    model = Lmer("Reaction ~ Days + (Days | Subject)", sleep)
    _quiet(model.fit, random_seed=1, **SMALL)
    return model


# ============================================================================== the executor
def _draw(shared, task, seed):
    """A toy task: a normal draw from the task's seed, shifted; task 2 raises."""
    if task == 2:
        raise ValueError("task two is broken")
    return shared + task + float(np.random.default_rng(seed).normal())


def test_tasks_are_seeded_per_task_and_a_failure_keeps_the_others():
    seeds, entropy = spawn_seeds(7, 5)
    assert entropy == 7 and seeds[3].spawn_key == (3,)
    serial = run_tasks(_draw, range(5), seeds, shared=100.0, workers=1, progressbar=False)
    local = run_tasks(_draw, range(5), seeds, shared=100.0, workers=2, progressbar=False)
    expected = [100.0 + i + float(np.random.default_rng(seeds[i]).normal()) for i in range(5)]
    for run in (serial, local):
        assert run.results[:2] + run.results[3:] == expected[:2] + expected[3:]
        assert run.results[2] is None
        (failure,) = run.failures
        assert (failure.index, failure.error, failure.message) == (2, "ValueError", "task two is broken")
        assert failure.seed.spawn_key == (2,) and "entropy=7" in str(failure) and "_draw" in failure.traceback
    assert (serial.executor, local.executor) == ("serial", "2 local processes")
    assert "1 of 5 tasks failed" in local.failure_message()


def test_executor_arguments_are_checked_before_anything_runs(monkeypatch):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(TypeError, match="workers must be a positive integer"):
            run_tasks(_draw, [1], [1], workers=bad)
    with pytest.raises(TypeError, match="either workers= .* or client="):
        run_tasks(_draw, [1], [1], workers=2, client="tcp://127.0.0.1:1")
    with pytest.raises(TypeError, match="dask.distributed.Client or a scheduler address"):
        run_tasks(_draw, [1], [1], client=object())
    with pytest.raises(ValueError, match="one seed per task"):
        run_tasks(_draw, [1, 2], [1])
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if dask were not installed
    with pytest.raises(ImportError, match=r"pip install 'bayeslmm\[dask\]'"):
        run_tasks(_draw, [1], [1], client="tcp://127.0.0.1:8786")


def test_progress_bar_counts_tasks_and_failures(capsys):
    seeds, _ = spawn_seeds(1, 4)
    run_tasks(_draw, range(4), seeds, shared=0.0, workers=1, progressbar=True, description="Toy", unit="tasks")
    err = capsys.readouterr().err
    assert "Toy: 4/4 tasks (100%)" in err and "1 failed" in err


def test_package_and_tasks_load_without_dask():
    code = (
        "import sys; sys.modules['distributed'] = None; sys.modules['dask'] = None\n"
        "import bayeslmm.engines.executor, bayeslmm.analysis.power, bayeslmm.models.many\n"
        "import json; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed') and sys.modules[m])))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "[]"


SIGINT_SCRIPT = """
import os, sys, time
from bayeslmm.engines.executor import run_tasks

def wait(directory, task, seed):
    open(os.path.join(directory, str(os.getpid())), "w").close()
    time.sleep(120)

if __name__ == "__main__":
    run_tasks(wait, range(6), range(6), shared=sys.argv[1], workers=2, progressbar=False)
"""


def test_ctrl_c_leaves_no_worker_process(tmp_path):
    psutil = pytest.importorskip("psutil")  # a dependency of dask.distributed (test extra)
    script = tmp_path / "interrupted.py"
    script.write_text(textwrap.dedent(SIGINT_SCRIPT))
    pids = tmp_path / "pids"
    pids.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, str(script), str(pids)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    workers = [int(p.name) for p in pids.iterdir()]
    assert len(workers) == 2, "two workers should be running a task"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0 and "KeyboardInterrupt" in err
    time.sleep(0.5)
    alive = [pid for pid in workers if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"worker processes {alive} outlived Ctrl-C"


# ============================================================================== identical everywhere
@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        with Client(local) as client:
            yield client


def _workloads(slopes: Lmer, sleep: pd.DataFrame, where: dict):
    frame = sleep.assign(Reaction2=sleep["Reaction"] * 1.5 + np.sin(np.arange(len(sleep))))
    curve = power(slopes, "Days", 5.0, along={"Subject": [6, 12]}, n_sims=1, random_seed=3, draws=150, tune=150, **where)
    many = fit_many("~ Days + (1 | Subject)", frame, ["Reaction", "Reaction2"], random_seed=4, **SMALL, **where)
    folds = _quiet(kfold, slopes, k=2, random_seed=5, draws=150, tune=150, **where)
    boot = _quiet(compare_variance_components, slopes, n_boot=2, random_seed=6, **where)
    return curve.simulations, many.coefs, np.asarray(folds.elpd_i), boot


def test_serial_processes_and_dask_cluster_give_identical_numbers(slopes, sleep, cluster):
    serial = _workloads(slopes, sleep, {"workers": 1})
    local = _workloads(slopes, sleep, {"workers": 2})
    dask = _workloads(slopes, sleep, {"client": cluster})
    for other in (local, dask):
        pd.testing.assert_frame_equal(serial[0], other[0], check_exact=True)
        pd.testing.assert_frame_equal(serial[1], other[1], check_exact=True)
        np.testing.assert_array_equal(serial[2], other[2])
        pd.testing.assert_frame_equal(serial[3], other[3], check_exact=True)
    assert len(serial[0]) == 2 and serial[1]["response"].tolist() == ["Reaction"] * 2 + ["Reaction2"] * 2


# ============================================================================== power
def test_power_matches_the_noncentral_t_power_of_a_balanced_design():
    """Between-group effect, 12 groups of 4: the REML t-test (Satterthwaite df 10) is the two-sample t-test
    of the group means, so the power is the noncentral t's: ``P(|T_10(delta)| > t_0.975,10)``."""
    groups, per_group, effect, tau, sigma = 12, 4, 1.5, 1.0, 1.0
    curve = _quiet(
        power, "y ~ x + (1 | g)", "x", effect, n_sims=120, random_seed=11, data=_between_design(groups, per_group),
        fixed={"(Intercept)": 0.3}, covariances={"g": tau**2}, sigma=sigma, draws=300, tune=300,
    )
    delta = effect / np.sqrt((tau**2 + sigma**2 / per_group) * 4 / groups)
    critical = stats.t.ppf(0.975, groups - 2)
    exact = stats.nct.sf(critical, groups - 2, delta) + stats.nct.cdf(-critical, groups - 2, delta)
    row = curve.table.iloc[0]
    assert (row["n_sims"], row["n_failed"], row["n_obs"]) == (120, 0, groups * per_group)
    assert abs(row["power"] - exact) < 4 * np.sqrt(exact * (1 - exact) / 120)
    interval = stats.binomtest(int(curve.simulations["reject"].sum()), 120).proportion_ci(0.95, method="exact")
    assert (row["power_2.5_ci"], row["power_97.5_ci"]) == pytest.approx((interval.low, interval.high))
    # Bayesian intervals with weakly informative priors reach nearly the same decisions
    sims = curve.simulations
    assert (sims["reject"] == sims["excludes_zero"]).mean() >= 0.9
    assert row["width"] == pytest.approx(sims["width"].mean())


def test_each_power_simulation_is_the_two_sample_t_test_of_its_seeded_data():
    """Simulation j at size n is seeded by SeedSequence(random_seed, spawn_key=(n, j)), whatever ran it."""
    data = _between_design(10, 3)
    parameters = {"fixed": {"(Intercept)": 0.0}, "covariances": {"g": 1.0}, "sigma": 1.0}
    curve = _quiet(power, "y ~ x + (1 | g)", "x", 1.0, n_sims=4, random_seed=21, data=data, workers=1, **parameters)
    design = build_design(parse_formula("y ~ x + (1 | g)"), data.assign(y=np.arange(len(data), dtype=float)))
    truth = TrueParameters(np.array([0.0, 1.0]), (np.array([[1.0]]),), {"sigma": 1.0})
    for j, row in curve.simulations.iterrows():
        rng = np.random.default_rng(np.random.SeedSequence(21, spawn_key=(10, j)))
        means = pd.Series(simulate_response(design, truth, rng)).groupby(data["g"]).mean()
        treated = (means.index % 2).astype(bool)
        test = stats.ttest_ind(means[treated], means[~treated])
        if not row["singular"]:
            assert row["p_value"] == pytest.approx(test.pvalue, abs=1e-5)
            assert row["DF"] == pytest.approx(8, abs=1e-3)


def test_a_term_with_several_columns_is_the_one_way_anova_f_test_of_the_group_means():
    """Three arms between 12 groups: lmerTest's Type III F test (denominator df 9) is the one-way ANOVA
    of the group means; the Bayesian decision uses the ellipsoid of the same contrasts."""
    data = _between_design(12, 3).assign(arm=lambda d: np.array(["a", "b", "c"])[d["g"] % 3])
    parameters = {"fixed": {"(Intercept)": 0.0}, "covariances": {"g": 0.5}, "sigma": 1.0}
    effect = {"arm[b]": 1.0, "arm[c]": 2.0}
    curve = _quiet(power, "y ~ arm + (1 | g)", "arm", effect, n_sims=3, random_seed=5, data=data, workers=1, **parameters)
    assert curve.settings["test"] == "F" and curve.simulations["estimate"].isna().all()
    design = build_design(parse_formula("y ~ arm + (1 | g)"), data.assign(y=np.arange(len(data), dtype=float)))
    truth = TrueParameters(np.array([0.0, 1.0, 2.0]), (np.array([[0.5]]),), {"sigma": 1.0})
    for j, row in curve.simulations.iterrows():
        rng = np.random.default_rng(np.random.SeedSequence(5, spawn_key=(12, j)))
        means = pd.Series(simulate_response(design, truth, rng)).groupby(data["g"]).mean()
        arms = np.array(["a", "b", "c"])[means.index % 3]
        anova = stats.f_oneway(*(means[arms == arm] for arm in "abc"))
        if not row["singular"]:
            assert row["statistic"] == pytest.approx(anova.statistic, rel=1e-4)
            assert row["p_value"] == pytest.approx(anova.pvalue, abs=1e-5)
            assert row["DF"] == pytest.approx(9, abs=1e-3)
    with pytest.raises(DataError, match=r"'arm' has 2 columns .* effect=\{'arm\[b\]': \.\.\., 'arm\[c\]': \.\.\.\}"):
        power("y ~ arm + (1 | g)", "arm", {"arm[b]": 1.0}, data=data, **parameters)


def test_power_curve_extends_the_grouping_factor_and_prints(slopes):
    curve = _quiet(power, slopes, "Days", 10.0, along={"Subject": [24, 6]}, n_sims=2, random_seed=1, workers=1, draws=150, tune=150)
    assert curve.table.index.tolist() == [6, 24] and curve.table["n_obs"].tolist() == [60, 240]
    assert curve.table.index.name == "Subject" and curve.settings["source"] == "REML fit of the model"
    text = repr(curve)
    assert "Power by simulation" in text and "Days = 10" in text and "[" in text
    assert curve.smallest_size(0.0) == 6 and curve.smallest_size(1.01) is None
    import matplotlib

    matplotlib.use("Agg")
    figure = curve.plot()
    assert len(figure.axes) == 2 and figure.axes[0].get_ylim()[1] == pytest.approx(1.02)


def test_power_refuses_bad_input_before_any_fit(slopes, sleep):
    with pytest.raises(DataError, match="'Hours' is not a fixed effect"):
        power(slopes, "Hours", 1.0)
    with pytest.raises(DataError, match="'Days' is not a grouping factor"):
        power(slopes, "Days", 1.0, along={"Days": [5]})
    with pytest.raises(ValueError, match="sizes must be integers of at least 2"):
        power(slopes, "Days", 1.0, along={"Subject": [1, 10]})
    with pytest.raises(ValueError, match="n_sims must be a positive integer"):
        power(slopes, "Days", 1.0, n_sims=0)
    with pytest.raises(ValueError, match="alpha must be"):
        power(slopes, "Days", 1.0, alpha=5)
    with pytest.raises(DataError, match="covariances= names \\['Patient'\\]"):
        power(slopes, "Days", 1.0, covariances={"Patient": 1.0})
    with pytest.raises(DataError, match="symmetric 2 x 2"):
        power(slopes, "Days", 1.0, covariances={"Subject": 1.0})
    with pytest.raises(DataError, match="give covariances and sigma"):
        power("y ~ x + (1 | g)", "x", 1.0, data=_between_design())
    with pytest.raises(DataError, match=r"missing \['\(Intercept\)'\]"):
        power("y ~ x + (1 | g)", "x", 1.0, data=_between_design(), covariances={"g": 1.0}, sigma=1.0)
    factor = sleep.assign(arm=np.where(sleep["Subject"] % 3 == 0, "a", np.where(sleep["Subject"] % 3 == 1, "b", "c")))
    with pytest.raises(DataError, match=r"'arm' has 2 columns \['arm\[b\]', 'arm\[c\]'\]"):
        power(Lmer("Reaction ~ arm + (1 | Subject)", factor), "arm", 1.0)
    with pytest.raises(UnsupportedSyntaxError, match="exact sampler"):
        power(slopes, "Days", 1.0, priors={"Days": Prior("Laplace", mu=0, b=1)})
    binary = _between_design().assign(y=np.arange(48) % 2)
    with pytest.raises(DataError, match="differs from the model's 'binomial'"):
        power(Lmer("y ~ x + (1 | g)", binary, family="binomial"), "x", 1.0, family="poisson")
    with pytest.raises(DataError, match="sigma= is not a parameter of the binomial family"):
        power(Lmer("y ~ x + (1 | g)", binary, family="binomial"), "x", 1.0, sigma=1.0)
    with pytest.raises(DataError, match=r"must hold the columns of the response 'cbind\(y, n - y\)'.*missing \['y'\]"):
        power("cbind(y, n - y) ~ x + (1 | g)", "x", 1.0, data=_between_design().assign(n=5), family="binomial",
              covariances={"g": 1.0}, fixed={"(Intercept)": 0.0})
    with pytest.raises(DataError, match="give dispersion"):
        power("y ~ x + (1 | g)", "x", 1.0, data=_between_design(), family="negbinomial", covariances={"g": 1.0},
              fixed={"(Intercept)": 0.0})


# ============================================================================== power of GLMMs
def test_glmm_power_is_the_wald_test_of_each_seeded_data_set():
    """Binomial (cbind) and Poisson designs: each simulation's p-value is the Wald z test (one column) or
    Wald chi-square test (a factor) of the Laplace fit of the data its seed gives, fitted here anew."""
    from bayeslmm.results.frequentist import fit_frequentist
    from bayeslmm.spec.families import get_family

    data = _between_design(12, 3).assign(n=5, arm=lambda d: np.array(["a", "b", "c"])[d["g"] % 3])
    cases = [
        ("cbind(y, n - y) ~ x + (1 | g)", "binomial", "x", 1.0, np.array([-0.5, 1.0]), "z"),
        ("y ~ arm + (1 | g)", "poisson", "arm", {"arm[b]": 0.5, "arm[c]": 1.0}, np.array([0.2, 0.5, 1.0]), "chisq"),
    ]
    for formula, family, term, effect, beta, test in cases:
        frame = data.assign(y=np.arange(len(data)) % 2)
        curve = _quiet(power, formula, term, effect, n_sims=3, random_seed=7, data=frame, family=family,
                       fixed={"(Intercept)": beta[0]}, covariances={"g": 0.3}, workers=1, draws=150, tune=150)
        assert curve.settings["test"] == test and curve.settings["family"] == family
        design = build_design(parse_formula(formula), frame, get_family(family))
        truth = TrueParameters(beta, (np.array([[0.3]]),), {})
        for j, row in curve.simulations.iterrows():
            rng = np.random.default_rng(np.random.SeedSequence(7, spawn_key=(12, j)))
            simulated = dataclasses.replace(design, y=simulate_response(design, truth, rng, get_family(family)))
            fit = _quiet(fit_frequentist, simulated, family=get_family(family))
            if test == "z":
                expected = fit.coefs.loc["x", "P-val"]
                assert row["statistic"] == pytest.approx(fit.coefs.loc["x", "Z-stat"], rel=1e-6) and row["DF"] == np.inf
            else:
                expected = fit.wald_test(np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))["P-val"]
                assert row["DF"] == 2
            assert row["p_value"] == pytest.approx(expected, rel=1e-6)
            assert row["reject"] == (expected < 0.05) and np.isfinite(row["R_hat"])
        assert "GLMM engine" in repr(curve) and "Wald" in repr(curve)


def test_glmm_power_from_a_model_uses_its_laplace_fit_and_dispersion():
    """A negative binomial model: simulated from its ML estimates, dispersion included, unless given."""
    grouse = load_dataset("grouseticks")
    model = Lmer("TICKS ~ YEAR + (1 | LOCATION)", grouse, family="negbinomial")
    fitted = model.fit_frequentist()
    curve = _quiet(power, model, "YEAR[96]", 1.0, along={"LOCATION": [10]}, n_sims=2, random_seed=2, workers=1,
                   draws=150, tune=150)
    parameters = curve.settings["parameters"]
    assert curve.settings["source"] == "Laplace (ML) fit of the model" and curve.settings["test"] == "z"
    assert parameters.aux == pytest.approx(fitted.aux)
    assert parameters.beta[list(model.design.fixed_terms).index("YEAR[96]")] == 1.0
    given = _quiet(power, model, "YEAR[96]", 1.0, along={"LOCATION": [10]}, n_sims=1, random_seed=2, workers=1,
                   dispersion=2.5, draws=150, tune=150)
    assert given.settings["parameters"].aux == {"dispersion": 2.5}
    assert curve.table["n_sims"].tolist() == [2]


# ============================================================================== simulation and extension
def test_simulated_group_effects_have_the_given_covariance():
    groups = 4000
    data = pd.DataFrame({"g": np.repeat(np.arange(groups), 2), "x": np.tile([0.0, 1.0], groups), "y": 0.0})
    data.loc[0, "y"] = 1.0
    design = build_design(parse_formula("y ~ x + (x | g)"), data)
    covariance = np.array([[4.0, 1.0], [1.0, 2.0]])
    truth = TrueParameters(np.array([1.0, -2.0]), (covariance,), {"sigma": 1e-6})
    y = simulate_response(design, truth, np.random.default_rng(5)).reshape(groups, 2)
    effects = np.column_stack([y[:, 0] - 1.0, y[:, 1] - y[:, 0] + 2.0])  # (b0, b1) per group
    standard_error = np.sqrt((covariance**2 + np.outer(np.diag(covariance), np.diag(covariance))) / groups)
    assert np.all(np.abs(np.cov(effects.T) - covariance) < 4 * standard_error)
    assert np.all(np.abs(effects.mean(axis=0)) < 4 * np.sqrt(np.diag(covariance) / groups))


def test_lkj_correlations_have_the_lkj_marginal_variance():
    rng = np.random.default_rng(3)
    for k, eta in ((2, 1.0), (3, 2.0)):
        draws = np.array([lkj_correlation(k, eta, rng)[0, k - 1] for _ in range(4000)])
        variance = 1 / (2 * (eta - 1 + k / 2) + 1)  # of 2 Beta(a, a) - 1 with a = eta - 1 + k / 2
        assert abs(draws.var() - variance) < 4 * variance * np.sqrt(2 / 4000)  # a normal's SE; these have lighter tails


def test_extend_data_copies_groups_under_new_labels_and_cuts_to_the_first_levels():
    data = pd.DataFrame({
        "subject": [1, 1, 2, 2, 3, 3], "item": ["i", "j"] * 3, "class": ["c1", "c1", "c2", "c2", "c3", "c3"], "x": range(6),
    })
    grown = extend_data(data, "subject", 5, nested=("class",))
    assert grown["subject"].tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert grown["class"].tolist()[6:] == ["c1.2", "c1.2", "c2.2", "c2.2"]
    assert grown["item"].tolist()[6:] == ["i", "j", "i", "j"]  # crossed: shared by the new subjects
    assert grown["x"].tolist()[6:] == [0, 1, 2, 3]
    cut = extend_data(data, "subject", 2)
    assert cut["subject"].tolist() == [1, 1, 2, 2] and cut.index.tolist() == [0, 1, 2, 3]
    labels = extend_data(data.assign(subject=list("aabbcc")), "subject", 4)["subject"].tolist()
    assert labels[6:] == ["a.2", "a.2"]
    with pytest.raises(DataError, match="at least 2 levels"):
        extend_data(data, "subject", 1)


def test_extend_within_repeats_or_cuts_each_combination():
    data = pd.DataFrame({"subject": [1, 1, 1, 2, 2, 2], "day": [0, 1, 2, 0, 1, 2], "x": range(6)})
    before = data.copy()
    twice = extend_within(data, ["subject", "day"], 2)
    assert twice["x"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5] and twice.index.tolist() == list(range(12))
    five = extend_within(data, ["subject"], 5)
    assert five["x"].tolist() == [0, 1, 2, 0, 1, 3, 4, 5, 3, 4]
    assert extend_within(data, ["subject"], 2)["day"].tolist() == [0, 1, 0, 1]
    pd.testing.assert_frame_equal(data, before)
    with pytest.raises(DataError, match="positive integer"):
        extend_within(data, ["subject"], 0)
    with pytest.raises(DataError, match="not columns of the data"):
        extend_within(data, ["Subject"], 2)


def test_power_within_adds_rows_per_group_and_tests_each_seeded_data_set():
    """within={"g": [6]} on groups of 3 rows: each group measured twice over; the REML t test is still the
    two-sample t test of the group means (df = groups - 2), on the extended data of each seed."""
    data = _between_design(10, 3)
    parameters = {"fixed": {"(Intercept)": 0.0}, "covariances": {"g": 1.0}, "sigma": 1.0}
    curve = _quiet(power, "y ~ x + (1 | g)", "x", 1.0, within={"g": [6]}, n_sims=3, random_seed=4, data=data,
                   workers=1, draws=150, tune=150, **parameters)
    assert curve.table.index.name == "rows per g" and curve.table["n_obs"].tolist() == [60]
    assert curve.settings["axis"] == "rows" and "number of rows per g" in repr(curve)
    extended = extend_within(data, ["g"], 6)
    design = build_design(parse_formula("y ~ x + (1 | g)"), extended.assign(y=np.arange(len(extended), dtype=float)))
    truth = TrueParameters(np.array([0.0, 1.0]), (np.array([[1.0]]),), {"sigma": 1.0})
    for j, row in curve.simulations.iterrows():
        rng = np.random.default_rng(np.random.SeedSequence(4, spawn_key=(6, j)))
        means = pd.Series(simulate_response(design, truth, rng)).groupby(extended["g"]).mean()
        treated = (means.index % 2).astype(bool)
        if not row["singular"]:
            assert row["p_value"] == pytest.approx(stats.ttest_ind(means[treated], means[~treated]).pvalue, abs=1e-5)
            assert row["DF"] == pytest.approx(8, abs=1e-3)
    with pytest.raises(DataError, match="not both"):
        power("y ~ x + (1 | g)", "x", 1.0, data=data, along={"g": [10]}, within={"g": [6]}, **parameters)
    with pytest.raises(DataError, match=r"within: \['G'\] not columns"):
        power("y ~ x + (1 | g)", "x", 1.0, data=data, within={"G": [6]}, **parameters)


# ============================================================================== fit_many
def test_fit_many_equals_separate_fits_with_the_recorded_seeds(sleep):
    frame = sleep.assign(noisy=sleep["Reaction"] + np.cos(np.arange(len(sleep))) * 20, **{"with gap": sleep["Reaction"]})
    frame.loc[[3, 50], "with gap"] = np.nan
    many = fit_many("~ Days + (1 | Subject)", frame, ["noisy", "with gap"], random_seed=8, workers=1, **SMALL)
    assert many.fits["n_obs"].tolist() == [180, 178] and not many.failures
    for response in ("noisy", "with gap"):
        name = response if response.isidentifier() else f"`{response}`"
        alone = _quiet(Lmer, f"{name} ~ Days + (1 | Subject)", frame)
        _quiet(alone.fit, random_seed=int(many.fits.loc[response, "seed"]), progressbar=False, **SMALL)
        table = many.coefs.query("response == @response").set_index("term").drop(columns="response")
        pd.testing.assert_frame_equal(table, alone.coefs, check_names=False)
        pd.testing.assert_frame_equal(many[response].coefs, alone.coefs)
    assert many["with gap"].design.n_obs == 178 and "2 mixed models" in repr(many)


def test_fit_many_refuses_bad_input(sleep):
    with pytest.raises(FormulaError, match="right-hand side"):
        fit_many("Reaction ~ Days + (1 | Subject)", sleep, ["Reaction"])
    with pytest.raises(DataError, match="'Speed' are not columns"):
        fit_many("~ Days + (1 | Subject)", sleep, ["Reaction", "Speed"])
    with pytest.raises(DataError, match="also used on the right-hand side"):
        fit_many("~ Days + (1 | Subject)", sleep, ["Days"])
    with pytest.raises(DataError, match="more than once"):
        fit_many("~ Days + (1 | Subject)", sleep, ["Reaction", "Reaction"])
    with pytest.raises(FormulaError, match="no random-effects term"):
        fit_many("~ Days", sleep, ["Reaction"])
    with pytest.raises(DataError, match="non-empty list"):
        fit_many("~ Days + (1 | Subject)", sleep, "Reaction")


# ============================================================================== SBC
def test_simulation_based_calibration_ranks_are_uniform():
    data = _between_design(8, 3).assign(y=np.linspace(-2, 2, 24) ** 2)
    model = Lmer("y ~ x + (1 | g)", data)
    result = simulation_based_calibration(model, 40, n_ranks=19, bins=4, draws=250, tune=250, random_seed=2)
    assert result.ranks.shape == (40, 4) and not result.failures
    assert result.ranks.to_numpy().min() >= 0 and result.ranks.to_numpy().max() <= 19
    assert (result.uniformity()["p_value"] > 1e-3).all()
