"""One progress display for every sampler and every loop of repeated fits.

A :class:`Progress` counts units of work (draws over all chains, or fits) and shows them as a bar:

- in a Jupyter kernel, one HTML bar updated in place (its plain-text form is the same bar as text,
  never an object's repr);
- in a terminal, one line on standard error redrawn in place, finished with a newline;
- nowhere when disabled: under CI, when output goes to a file or a pipe (see
  :func:`bayeslmm.engines.sampling.resolve_progressbar`), or with ``progressbar=False``.

Updates may come from any thread (nutpie reports from its own) and are throttled to ten a second.
"""

from __future__ import annotations

import html
import sys
import threading
import time

from bayeslmm.engines.sampling import in_jupyter

__all__ = ["Progress", "nutpie_callback"]

_WIDTH = 30
_INTERVAL = 0.1


class _Bar:
    """A text and HTML rendering of one state of a progress bar."""

    def __init__(self, text: str, fraction: float, failed: bool = False):
        self.text, self.fraction, self.failed = text, fraction, failed

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        color = "#c0392b" if self.failed else "#2a7ab0"
        percent = f"{100 * self.fraction:.0f}%"
        return (
            '<div class="bayeslmm-progress" style="font-family: monospace; font-size: 12px">'
            f'<div style="display:inline-block; width:200px; height:10px; background:#e5e5e5; '
            f'vertical-align:middle"><div style="width:{percent}; height:10px; background:{color}"></div></div>'
            f" {html.escape(self.text)}</div>"
        )


class Progress:
    """A progress bar over ``total`` units of work.

    Parameters
    ----------
    total : int
        Units of work (e.g. draws of all chains including tuning, or fits).
    description : str
        What is running, e.g. ``"Sampling 4 chains"``.
    unit : str
        Name of a unit, e.g. ``"draws"`` or ``"fits"``.
    enabled : bool
        False shows nothing (every method is then a no-op).

    Examples
    --------
    >>> with Progress(10, "Refitting", "fits", enabled=False) as bar:
    ...     for i in range(10):
    ...         bar.update(i + 1)
    """

    def __init__(self, total: int, description: str, unit: str = "draws", enabled: bool = True) -> None:
        self.total = max(int(total), 1)
        self.description, self.unit, self.enabled = description, unit, bool(enabled)
        self.done, self.note = 0, ""
        self._start = time.perf_counter()
        self._last = 0.0
        self._lock = threading.Lock()
        self._handle = None
        self._jupyter = False
        self._closed = False
        if self.enabled:
            self._jupyter = in_jupyter()
            self._draw(force=True)

    # -- updates -----------------------------------------------------------------------------------
    def update(self, done: int, note: str = "") -> None:
        """Set the number of units done (and an optional note, e.g. divergences)."""
        if not self.enabled:
            return
        with self._lock:
            self.done, self.note = min(int(done), self.total), note
            self._draw()

    def close(self, failed: bool = False) -> None:
        """Draw the final state and end the line."""
        if not self.enabled or self._closed:
            return
        with self._lock:
            self._closed = True
            self._draw(force=True, failed=failed)
            if not self._jupyter:
                sys.stderr.write("\n")
                sys.stderr.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, kind, value, traceback) -> bool:
        self.close(failed=kind is not None)
        return False

    # -- drawing ---------------------------------------------------------------------------------
    def _state(self, failed: bool) -> _Bar:
        fraction = self.done / self.total
        seconds = time.perf_counter() - self._start
        text = (
            f"{self.description}: {self.done}/{self.total} {self.unit} ({100 * fraction:.0f}%), "
            f"{seconds:.1f} s" + (f", {self.note}" if self.note else "") + (" - interrupted" if failed else "")
        )
        return _Bar(text, fraction, failed)

    def _draw(self, force: bool = False, failed: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < _INTERVAL:
            return
        self._last = now
        state = self._state(failed)
        try:
            if self._jupyter:
                self._draw_jupyter(state)
            else:
                filled = int(round(_WIDTH * state.fraction))
                sys.stderr.write(f"\r[{'#' * filled}{'.' * (_WIDTH - filled)}] {state.text}\x1b[K")
                sys.stderr.flush()
        except Exception:  # noqa: BLE001 -- a broken display must never stop a fit
            self.enabled = False

    def _draw_jupyter(self, state: _Bar) -> None:
        from IPython.display import display

        if self._handle is None:
            self._handle = display(state, display_id=True)
        else:
            self._handle.update(state)


def nutpie_callback(progress: Progress, divergences_too: bool = True):
    """A nutpie progress callback (list of per-chain progress objects) that updates ``progress``."""

    def callback(chains) -> None:
        done = sum(int(chain.finished_draws) for chain in chains)
        divergent = sum(int(chain.divergences) for chain in chains)
        note = f"{divergent} divergences" if divergences_too and divergent else ""
        progress.update(done, note)

    return callback
