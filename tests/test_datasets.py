"""Shipped data sets and the Simpson's-paradox simulator."""

import numpy as np
import pytest

from bayeslmm import DataError, list_datasets, load_dataset, simulate_simpson


@pytest.mark.parametrize(
    ("name", "shape", "columns"),
    [
        ("sleepstudy", (180, 3), ["Reaction", "Days", "Subject"]),
        ("Dyestuff", (30, 2), ["Batch", "Yield"]),
        ("Penicillin", (144, 3), ["diameter", "plate", "sample"]),
        ("cbpp", (56, 4), ["herd", "incidence", "size", "period"]),
        ("InstEval", (73421, 7), ["s", "d", "studage", "lectage", "service", "dept", "y"]),
        ("VerbAgg", (7584, 9), ["Anger", "Gender", "item", "resp", "id", "btype", "situ", "mode", "r2"]),
    ],
)
def test_load(name, shape, columns):
    frame = load_dataset(name)
    assert frame.shape == shape
    assert list(frame.columns) == columns


def test_aliases_case_and_copies():
    a, b = load_dataset("sleep"), load_dataset("SLEEPSTUDY")
    assert a.equals(b)
    a.loc[0, "Reaction"] = -1.0
    assert load_dataset("sleep").loc[0, "Reaction"] == pytest.approx(249.56)
    assert "sleep" in list_datasets() and "insteval" in list_datasets()


def test_r_factors_stored_as_numbers_become_categories():
    assert str(load_dataset("cbpp")["period"].dtype) == "category"
    assert list(load_dataset("cbpp")["period"].cat.categories) == ["1", "2", "3", "4"]


def test_unknown_dataset():
    with pytest.raises(DataError, match="no dataset named 'sleeps'; available: .*sleepstudy"):
        load_dataset("sleeps")


def test_simpson_paradox():
    data = simulate_simpson(n_participants=6, n_per_participant=25, random_seed=1)
    assert list(data.columns) == ["participant", "intercept", "x", "y"] and len(data) == 150
    # each participant's true intercept: their y minus the within slope (-1) times x is intercept + noise
    residual = data.y - (data.intercept - data.x)
    assert abs(residual.mean()) < 0.2 and 0.8 < residual.std() < 1.2
    course = simulate_simpson()
    assert course.shape == (200, 4) and course["participant"].nunique() == 20
    pooled_slope = np.polyfit(data.x, data.y, 1)[0]
    within = [np.polyfit(g.x, g.y, 1)[0] for _, g in data.groupby("participant")]
    assert pooled_slope > 0.5
    assert max(within) < 0
    assert simulate_simpson(random_seed=3).equals(simulate_simpson(random_seed=3))
    with pytest.raises(ValueError, match="at least 2 participants"):
        simulate_simpson(n_participants=1)
