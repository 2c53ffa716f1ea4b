"""Glue shared by the experiment scripts: flags, errors, runs, small trainers, summaries, figures.

Each script stays short and forkable. It defines its flags with `define_flags` (plus its own),
then calls `parse_flags()` *before* importing JAX or the library's heavy parts, so that ``--help``
answers at once and a misspelt flag or config field is refused in one line (exit 2) before
anything is compiled; it ends with ``_common.run(main)``, which turns the errors a user makes
(an unknown model or dataset, data that is not there) into one line and exit status 2, with the
full traceback only under ``--debug``. It loads or trains what it needs with `load_splits` /
`load_or_train`, writes ``summary.json`` with `write_summary`, prints Markdown tables with
`print_table` and draws figures with `plot`, which never lets a failing figure cost the computed
results.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags, logging
from ml_collections import config_dict, config_flags

import landscape_jax as lj  # lazy: loads no JAX until a name is used

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (TFDS reads) logs only errors

_HELP_ARGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")
_DEBUG = flags.DEFINE_bool("debug", False, "Show full tracebacks of user errors (a misspelt "
                           "model or dataset, missing data) instead of one line.")
_state: dict[str, Any] = {"argv": None, "config_fn": None}


class UserError(Exception):
  """An error the user fixes from the command line (reported in one line, exit status 2)."""


def define_flags(what: str = "Config file (.py).", *, progress_help: str = "Show progress bars."):
  """``(config, workdir, progress)`` flag holders: ``--config`` (a config file, with
  ``--config.<field>=`` overrides), ``--workdir`` (required) and ``--progress``."""
  config = config_flags.DEFINE_config_file("config", None, what)
  workdir = flags.DEFINE_string("workdir", None, "Output directory.")
  progress = flags.DEFINE_bool("progress", True, progress_help)
  flags.mark_flags_as_required(["config", "workdir"])
  return config, workdir, progress


def check_argv(argv: Sequence[str]) -> None:
  """Refuses positional arguments (a forgotten ``--``, a misspelt flag)."""
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {list(argv[1:])}; every option is a --flag=value "
                    "(--help lists them)")


def _prog() -> str:
  return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "script"


def _fail(message: str) -> None:
  """One line on stderr, exit status 2 (a usage error, as argparse does)."""
  print(f"{_prog()}: error: {message}", file=sys.stderr)
  sys.exit(2)


def load_config_file(spec: str):
  """The ConfigDict of ``path[:arg]`` as ``--config`` loads it (``get_config(arg)``)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise UserError(f"--config={spec}: no such file {path!r} (the configs are in "
                    "experiments/configs/)")
  module_spec = importlib.util.spec_from_file_location("_config_for_help", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def config_fields(config, prefix: str = "") -> list[tuple[str, Any]]:
  """``(dotted name, value)`` of every field of a ConfigDict, nested ones included."""
  out = []
  for key, value in sorted(config.items()):
    name = f"{prefix}{key}"
    if isinstance(value, config_dict.ConfigDict):
      out += config_fields(value, name + ".")
    else:
      out.append((name, value))
  return out


def _example_config(doc: str) -> str | None:
  m = re.search(r"--config=(experiments/configs/[\w.]+\.py(?::\w+)?)", doc or "")
  return m[1] if m else None


def help_text() -> str:
  """The script's docstring, every flag it takes and the fields of its config."""
  main = sys.modules["__main__"]
  doc = (main.__doc__ or "").strip()
  lines = [doc, "", "Flags:"]
  for module, module_flags in sorted(flags.FLAGS.flags_by_module_dict().items()):
    if module.startswith(("absl", "ml_collections")):
      continue
    for f in sorted(module_flags, key=lambda f: f.name):
      default = "" if f.default is None else f" (default: {f.default_as_str or repr(f.default)})"
      lines.append(f"  --{f.name}: {f.help}{default}")
  lines.append("  --help: show this message and exit")
  spec = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--config=")), None)
  what = spec or _example_config(doc)
  try:
    if _state["config_fn"] is not None and "config" not in flags.FLAGS:
      config, what = _state["config_fn"](), "this script"
    else:
      config = load_config_file(what) if what else None
  except Exception as e:  # a help text must not fail on a broken config file
    config = None
    lines += ["", f"(could not load the config {what}: {e})"]
  if config is not None:
    if "config" in flags.FLAGS:
      lines += ["", f"Config fields of {what} (set any with --config.<field>=value; "
                "--help --config=FILE lists another file's):"]
    else:
      lines += ["", "Config of this script (not settable; its flags choose it):"]
    lines += [f"  {name} = {value!r}" for name, value in config_fields(config)]
  return "\n".join(lines)


def _config_error(e: Exception) -> str:
  """One line for an error raised while ``--config`` and its overrides are parsed."""
  spec = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--config=")), None)
  overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
  if spec is not None:
    try:
      config = load_config_file(spec)
    except UserError as u:
      return str(u)
    except Exception as f:
      return f"--config={spec}: the config file fails to load: {type(f).__name__}: {f}"
    names = {name for name, _ in config_fields(config)}
    prefixes = {name.rsplit(".", i)[0] for name in names for i in range(name.count(".") + 1)}
    for arg in overrides:
      field = arg[len("--config."):].split("=", 1)[0]
      if field not in names and field not in prefixes:
        close = [n for n in sorted(names) if n.split(".")[-1] in field or field in n]
        return (f"{arg}: {spec} has no field {field!r}"
                + (f" (did you mean {', '.join(close[:3])}?)" if close else "")
                + "; --help --config=" + spec + " lists its fields")
  return f"bad --config or override: {type(e).__name__}: {e}".replace("\n", " ")


def parse_flags(*, config_fn: Callable | None = None) -> None:
  """Parses ``sys.argv`` now, before the script imports JAX.

  ``--help`` prints the script's docstring, every flag and the config's fields, and exits 0.
  Unknown flags, bad values, a missing required flag, a config file that does not exist and an
  override of a config field that does not exist print one line and exit 2. `config_fn` gives
  the config a script without ``--config`` lists in its help (the quickstart's sizes).
  """
  _state["config_fn"] = config_fn
  argv = list(sys.argv)
  if any(a in _HELP_ARGS for a in argv[1:]):
    print(help_text())
    sys.exit(0)
  try:
    _state["argv"] = flags.FLAGS(argv)
  except flags.Error as e:
    if "--debug" in argv:
      raise
    message = " ".join(str(e).split())
    if m := re.search(r"Flag --(\w+) must have a value other than None", message):
      example = _example_config(sys.modules["__main__"].__doc__ or "") or "FILE"
      message = f"--{m[1]} is required" + (
        f" (e.g. --config={example})" if m[1] == "config" else "")
    elif message.startswith("flag --config="):  # the file fails to load
      message = _config_error(e)
    _fail(f"{message} (--help lists the flags)")
  except Exception as e:  # ml_collections: an override of a field the config does not have
    if "--debug" in argv:
      raise
    _fail(_config_error(e))
  if "config" in flags.FLAGS:
    try:  # ml_collections defers a config file's load error to the first use
      flags.FLAGS["config"].value.items()
    except Exception as e:
      if "--debug" in argv:
        raise
      _fail(_config_error(e))


def _data_dir_flags(config=None) -> list[str]:
  """``--config.<path>.data_dir=DIR`` for every ``data_dir`` field of the parsed config."""
  if config is None:
    try:
      config = flags.FLAGS["config"].value
    except (KeyError, flags.Error, OSError):
      return []
  if config is None:
    return []
  return [f"--config.{name}=DIR" for name, _ in config_fields(config)
          if name.split(".")[-1] == "data_dir"]


def user_error_message(e: BaseException, config=None) -> str | None:
  """One line for the errors a user fixes from the command line; None for anything else.

  A dataset that is not prepared names the ``data_dir`` fields of `config` (default: the
  parsed ``--config``) as the flags that fix it, and how to prepare the data offline.
  """
  if isinstance(e, UserError):
    return str(e)
  if isinstance(e, lj.data.DatasetNotPreparedError):
    fixes = " or ".join(_data_dir_flags(config) + ["TFDS_DATA_DIR=DIR"])
    return (f"dataset '{e.name}' is not prepared under {e.where}. Point the script at a prepared "
            f"TFDS copy with {fixes}. To make one, on a machine with network access run: "
            f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{e.name}', "
            f"data_dir='DIR').download_and_prepare()\" and copy DIR here")
  if isinstance(e, ImportError) and "landscape-jax[" in str(e):
    return str(e)  # a missing extra: the message names the pip install
  return None


def run(main: Callable[[Sequence[str]], Any]) -> None:
  """``app.run(main)`` on the flags `parse_flags` parsed; user errors as one line, exit 2."""
  if _state["argv"] is None:
    parse_flags()

  def guarded(argv):
    try:
      check_argv(argv)
      return main(argv)
    except Exception as e:
      message = user_error_message(e)
      if message is None or _DEBUG.value:
        raise
      _fail(f"{message} (--debug shows the traceback)".replace("\n", " "))

  app.run(guarded, flags_parser=lambda _: _state["argv"])


def load(name: str, split: str, **kwargs):
  """``lj.load(name, split, **kwargs)``; an unknown dataset name is a `UserError`."""
  if name not in lj.data.KNOWN:
    raise UserError(f"unknown dataset {name!r}; known: {', '.join(lj.data.KNOWN)}")
  return lj.load(name, split, **kwargs)


def get_model(name: str, **kwargs):
  """``lj.get_model(name, **kwargs)``; an unknown or invalid model is a `UserError`."""
  try:
    return lj.get_model(name, **kwargs)
  except (ValueError, TypeError) as e:
    raise UserError(str(e)) from e


def load_splits(config, splits: Sequence[str] = ("train", "test")) -> list[lj.data.Dataset]:
  """The named splits of ``config.dataset`` (from ``config.data_dir`` when set)."""
  return [load(config.dataset, split, data_dir=config.get("data_dir")) for split in splits]


def build_model(config, num_classes: int):
  """``lj.get_model(config.model, num_classes=..., **config.model_kwargs)``."""
  return get_model(config.model, num_classes=num_classes, **dict(config.get("model_kwargs") or {}))


def load_or_train(config, workdir: str, *, progress: bool):
  """``(model, variables, train split, run config, run dir)`` of ``config.run``, or of a run of
  ``config.train`` trained (or resumed) into ``<workdir>/train`` when ``config.run`` is empty."""
  from landscape_jax.methods import rundir, training

  run = config.get("run")
  if not run:
    run = os.path.join(workdir, "train")
    train_ds, test_ds = load_splits(config.train)
    training.train(build_model(config.train, train_ds.num_classes), train_ds, test_ds,
                   config=config.train, workdir=run, progress=progress)
  model, variables, train_ds, run_config = rundir.load_run(run, step=config.get("step"),
                                                           data_dir=config.get("data_dir"))
  return model, variables, train_ds, run_config, run


def train_adam(loss_fn: Callable, params, images, labels, *, learning_rate: float,
               batch_size: int, steps: int, seed: int):
  """Adam on random minibatches (drawn without replacement within a batch), one compiled
  `lax.scan` over `steps`; the keys depend on `seed` only. Returns the trained params."""
  import jax
  import jax.numpy as jnp
  import optax

  opt = optax.adam(learning_rate)
  images, labels = jnp.asarray(images), jnp.asarray(labels)
  n = images.shape[0]
  b = min(batch_size, n)

  @jax.jit
  def run(params, key):
    def step(carry, k):
      p, s = carry
      idx = jax.random.choice(k, n, (b,), replace=False)
      u, s = opt.update(jax.grad(loss_fn)(p, (images[idx], labels[idx])), s, p)
      return (optax.apply_updates(p, u), s), None
    keys = jax.random.split(key, steps)
    return jax.lax.scan(step, (params, opt.init(params)), keys)[0][0]

  return run(params, jax.random.key(1000 + seed))


def write_summary(workdir: str, summary: dict[str, Any]) -> str:
  """Writes ``<workdir>/summary.json`` atomically; returns its path."""
  path = os.path.join(workdir, "summary.json")
  lj.fileio.atomic_write_text(path, json.dumps(summary, indent=1, default=str))
  return path


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, fmt: str = ".4f") -> None:
  """Prints a Markdown table; floats formatted with `fmt`."""
  cell = lambda v: format(v, fmt) if isinstance(v, float) else str(v)
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for row in rows:
    print("| " + " | ".join(cell(v) for v in row) + " |")


def plot(name: str, path: str, *args, **kwargs):
  """``lj.plotting.save(lj.plotting.<name>(*args, **kwargs), path)``: the figure as `path`.png and
  `path`.pdf. A failure is logged, never raised (a figure must never cost the computed results).
  Returns the written files, or None."""
  try:
    return lj.plotting.save(getattr(lj.plotting, name)(*args, **kwargs), path)
  except Exception as e:
    logging.warning("Plot %s failed: %s", name, e)
    return None
