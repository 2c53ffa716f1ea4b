"""The experiment scripts answer: ``--help`` at once (exit 0, every flag and config field), and
a user's mistake (unknown flag, config field, model, dataset; data that is not there) in one line
with exit status 2, the traceback only under ``--debug``."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(f for f in os.listdir(os.path.join(ROOT, "experiments"))
                 if f.endswith(".py") and not f.startswith("_"))


def _run(*args, timeout=120):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                        env=env, timeout=timeout)


def _flags_of(script):
  """The flags a script defines (its own DEFINE_* calls and _common's)."""
  import re
  text = open(os.path.join(ROOT, "experiments", script)).read()
  own = re.findall(r'DEFINE_\w+\(\s*"(\w+)"', text)
  return set(own) | ({"config", "workdir", "progress"} if "define_flags(" in text else set())


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_every_flag_and_config_field_without_jax(script):
  out = _run("-X", "importtime", f"experiments/{script}", "--help")
  assert out.returncode == 0, out.stderr[-2000:]
  text = out.stdout
  assert text.splitlines()[0].strip(), "the help starts with the script's docstring"
  for name in _flags_of(script) | {"debug", "help"}:
    assert f"--{name}:" in text, (name, text)
  assert "Config" in text and " = " in text, text  # the config's fields and values
  # --help never imports JAX or TensorFlow (what makes a help take seconds).
  imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines()}
  assert not imported & {"jax", "jaxlib", "tensorflow", "flax"}, imported & {"jax", "flax"}


def test_help_lists_the_fields_of_the_config_given():
  out = _run("experiments/train.py", "--help", "--config=experiments/configs/digits_mlp.py")
  assert out.returncode == 0
  assert "Config fields of experiments/configs/digits_mlp.py" in out.stdout
  assert "  model = 'mlp'" in out.stdout


def _one_line_error(out, *needles):
  assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
  lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1, out.stderr
  assert "Traceback" not in out.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


TRAIN = ("experiments/train.py", "--config=experiments/configs/digits_mlp.py")


@pytest.mark.parametrize("args, needles", [
  (("--bogus=1",), ("Unknown command line flag 'bogus'",)),
  (("--config.learning_rat=0.1",), ("has no field 'learning_rat'", "learning_rate")),
  (("--config.num_epochs=abc",), ("--config.num_epochs=abc",)),
], ids=["flag", "config-field", "config-value"])
def test_flag_mistakes_are_one_line_before_jax(tmp_path, args, needles):
  _one_line_error(_run(*TRAIN, f"--workdir={tmp_path}", *args), *needles)


def test_missing_config_file_and_required_flags(tmp_path):
  _one_line_error(_run("experiments/train.py", "--config=experiments/configs/nope.py",
                       f"--workdir={tmp_path}"), "no such file")
  _one_line_error(_run("experiments/hessian.py", f"--workdir={tmp_path}"),
                  "--config is required", "--config=experiments/configs/hessian_digits.py")


@pytest.mark.parametrize("override, needles", [
  ("--config.model=resnet7", ("Invalid model 'resnet7'", "6n + 2")),
  ("--config.dataset=cifar11", ("unknown dataset 'cifar11'", "cifar10")),
], ids=["model", "dataset"])
def test_unknown_model_or_dataset_is_one_line_and_debug_shows_the_traceback(tmp_path, override,
                                                                             needles):
  _one_line_error(_run(*TRAIN, f"--workdir={tmp_path}", override), *needles, "--debug")
  out = _run(*TRAIN, f"--workdir={tmp_path}", override, "--debug")
  assert out.returncode != 0 and "Traceback" in out.stderr


def test_missing_data_names_the_flags_that_fix_it(monkeypatch):
  monkeypatch.syspath_prepend(os.path.join(ROOT, "experiments"))
  monkeypatch.delitem(sys.modules, "_common", raising=False)  # benchmarks/ has one too
  import _common
  import ml_collections

  import landscape_jax as lj

  config = ml_collections.ConfigDict({"train": {"dataset": "cifar10", "data_dir": None},
                                      "data_dir": None, "split": "train"})
  err = lj.data.DatasetNotPreparedError("not prepared", name="cifar10", where="/data/tfds")
  message = _common.user_error_message(err, config)
  assert "\n" not in message
  for needle in ("'cifar10' is not prepared under /data/tfds", "--config.data_dir=DIR",
                 "--config.train.data_dir=DIR", "download_and_prepare()"):
    assert needle in message, message
  assert "download=True" not in message  # no script offers it
  assert _common.user_error_message(ValueError("a bug")) is None  # bugs keep their traceback
