"""Progress bars: one tqdm bar per long call, quiet in logs, a widget in notebooks.

Every long call of the library (the point engine behind surfaces, paths and curves; training;
the Hessian functions; weight matching) shows its progress through `progress_bar`:

* in a terminal, a text bar on stderr;
* when stderr is not a terminal (a log file, a pipe, a test), nothing (tqdm's ``disable=None``);
* in a Jupyter / Colab kernel, tqdm's notebook widget where ipywidgets is installed (one widget
  per call, updated in place), else nothing: a text bar in a notebook becomes a new output at
  every refresh.

Compiled loops (Lanczos steps, Hutchinson probes) advance the bar from inside ``jax.jit`` with
`tick`, a ``jax.debug.callback`` that updates the innermost bar opened by `active`; it is traced
in only when a bar is asked for, so that the results never depend on it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["active", "in_notebook", "progress_bar", "tick"]

_ACTIVE: list[Any] = []


def in_notebook() -> bool:
  """True inside a Jupyter / Colab / VS Code kernel (ipykernel), False in a terminal."""
  shell = sys.modules.get("IPython")
  if shell is None or "ipykernel" not in sys.modules:
    return False
  ip = shell.get_ipython()
  return ip is not None and "zmq" in type(ip).__name__.lower()


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None,
                 desc: str | None = None, unit: str = "it", enabled: bool = True,
                 initial: int = 0, **kwargs):
  """A tqdm bar for one call (see the module docstring for where it shows).

  Args:
    iterable: optional iterable to wrap (as ``tqdm(iterable)``).
    total: number of units, when known.
    desc: the bar's label.
    unit: the unit's name (``"pt"``, ``"step"``, ...).
    enabled: False: no bar at all (the caller's ``progress=False``).
    initial: units already done (a resumed run).
    **kwargs: passed to tqdm (``postfix``, ...).

  Returns:
    A tqdm instance (disabled where no bar is shown: ``update``, ``close`` and iteration still
    work).
  """
  disable: bool | None
  if enabled and in_notebook():
    if importlib.util.find_spec("ipywidgets") is not None:
      from tqdm.notebook import tqdm
      disable = False
    else:
      from tqdm.std import tqdm
      disable = True
  else:
    from tqdm.std import tqdm
    disable = None if enabled else True
  kwargs.setdefault("dynamic_ncols", True)
  return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable,
              **kwargs)


@contextlib.contextmanager
def active(bar) -> Iterator[Any]:
  """Makes `bar` the one `tick` advances for the duration of the block, then closes it.

  Waits for every pending callback (``jax.effects_barrier``) before closing, so that the bar ends
  at the work actually done.
  """
  _ACTIVE.append(bar)
  try:
    yield bar
  finally:
    try:
      import jax

      jax.effects_barrier()
    finally:
      _ACTIVE.remove(bar)
      bar.close()


def _advance(n) -> None:
  if _ACTIVE:
    _ACTIVE[-1].update(int(n))


def tick(n: int = 1) -> None:
  """Inside traced code: advances the innermost `active` bar by `n` when this point runs.

  A ``jax.debug.callback`` (under ``vmap`` it runs once per batch element); outside an `active`
  block it does nothing.
  """
  import jax

  jax.debug.callback(_advance, n)
