"""bayeslmm's own progress display: a bar in terminals and notebooks, nothing when disabled."""

from __future__ import annotations

from types import SimpleNamespace

from bayeslmm.engines.progress import Progress, _Bar, nutpie_callback


def test_disabled_progress_prints_nothing(capsys):
    with Progress(10, "Sampling", "draws", enabled=False) as bar:
        bar.update(5)
    assert capsys.readouterr() == ("", "")


def test_terminal_bar_is_one_line_redrawn_and_ended(capsys):
    with Progress(4000, "Sampling 4 chains", "draws", enabled=True) as bar:
        bar.update(4000, "2 divergences")
    err = capsys.readouterr().err
    assert err.startswith("\r[") and err.endswith("\n")
    last = err.rstrip("\n").split("\r")[-1]
    assert "Sampling 4 chains: 4000/4000 draws (100%)" in last and "2 divergences" in last
    assert "[" + "#" * 30 + "]" in last


def test_interrupted_bar_says_so(capsys):
    try:
        with Progress(10, "Refitting", "fits", enabled=True) as bar:
            bar.update(3)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert "interrupted" in capsys.readouterr().err


def test_notebook_rendering_is_text_and_html_never_a_repr():
    state = _Bar("Sampling 2 chains: 10/20 draws (50%), 0.1 s", 0.5)
    assert repr(state) == "Sampling 2 chains: 10/20 draws (50%), 0.1 s"
    html = state._repr_html_()
    assert "width:50%" in html and "Sampling 2 chains" in html and "bayeslmm-progress" in html


def test_nutpie_callback_sums_the_chains():
    seen = []

    class Recorder:
        def update(self, done, note=""):
            seen.append((done, note))

    chains = [SimpleNamespace(finished_draws=300, divergences=1), SimpleNamespace(finished_draws=200, divergences=0)]
    nutpie_callback(Recorder())(chains)
    assert seen == [(500, "1 divergences")]
