"""The benchmark scripts run end to end at tiny size (so that they cannot rot), and every surface
strategy they time computes the same values (JAX loop, PyTorch twin, surface_grid variants)."""

import importlib.util
import os
import sys

import conftest
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks",
                                                                   f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_BENCH_COMMON = _load("_common")


@pytest.fixture(autouse=True)
def _benchmarks_common():
  """benchmarks/_common.py is `_common` during each test (the scripts import it by that name,
  some inside functions): experiments/ has a `_common` too, on pytest's pythonpath, which a test
  of the experiment scripts may have imported first in the same worker."""
  saved = sys.modules.get("_common")
  sys.modules["_common"] = _BENCH_COMMON
  yield
  if saved is None:
    sys.modules.pop("_common", None)
  else:
    sys.modules["_common"] = saved


@pytest.mark.slow
def test_bench_surface_tiny():
  rep = _load("bench_surface").main(["--tiny", "--no-record"])
  rows = {r["variant"]: r for r in rep.rows}
  assert any(v.startswith("surface_grid map") for v in rows)
  assert any(v.startswith("surface_grid vmap") for v in rows)
  assert any(v.startswith("JAX ref") for v in rows)
  for name, r in rows.items():
    assert r["points/s"] > 0, name
    # every strategy evaluates the same surface (float32 rounding only); NaN (no shared grid
    # point, or a NaN loss) fails too
    assert np.isfinite(r["max |dloss|"]) and r["max |dloss|"] < 1e-3, (name, r["max |dloss|"])


@pytest.mark.slow
def test_bench_curve_step_tiny():
  res = _load("bench_curve_step").main(["--tiny", "--no-record"])
  assert res["plain train_step"] > 0
  assert all(v > 0 for v in res.values())


@pytest.mark.slow
def test_bench_loops_tiny():
  """Every variant computes the same products and the same SGD epoch (float rounding only)."""
  res = _load("bench_loops").main(["--tiny", "--no-record"])
  assert len(res) == 6 and all(v > 0 for v in res.values())


def test_flop_count_matches_hand_count():
  common = _load("_common")
  import jax
  import jax.numpy as jnp

  def f(w, x):
    y = jax.lax.conv_general_dilated(x, w["k"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(x.shape[0], -1) @ w["d"]

  w = {"k": jnp.zeros((3, 3, 4, 8)), "d": jnp.zeros((6 * 6 * 8, 5))}
  x = jnp.zeros((2, 6, 6, 4))
  expected = 2 * (6 * 6 * 8 * 3 * 3 * 4) + 2 * (6 * 6 * 8 * 5)
  assert common.model_flops_per_example(f, w, x) == expected


@pytest.mark.slow
def test_bench_identity_tiny():
  """The identity/engine overhead benchmark runs; its hand-written loop evaluates the same grid."""
  res = _load("bench_identity").main(["--tiny", "--no-record", "--repeats", "1"])
  assert all(np.isfinite(v) and v > 0 for v in res.values()), res


@pytest.mark.slow
def test_bench_versus_commit_tiny():
  """Both trees compute the same surface (compared against HEAD itself: same code)."""
  res = _load("bench_versus_commit").main(["--tiny", "--no-record", "--rounds", "1",
                                           "--ref", "HEAD"])
  assert res["dloss"] == 0.0 and res["speed_ratio"] > 0


@pytest.mark.slow
def test_bench_adaptive_tiny():
  """The adaptive-vs-dense benchmark runs end to end at tiny size."""
  out = _load("bench_adaptive").main(["--tiny", "--no-record"])
  assert out is not None


# ------------------------------------------------------------- PyTorch-side baselines and peers
def _torch_missing() -> str | None:
  """Why the PyTorch halves are skipped (None when torch is importable, here or by the
  interpreter in ``$LANDSCAPE_JAX_TORCH_PYTHON``, which the benchmarks then use)."""
  ok, why = _BENCH_COMMON.torch_installed()
  return None if ok else why


def _jax_part_ran_then_skip_torch(reason):
  """The JAX half ran and passed; the PyTorch half is skipped with its reason printed."""
  print(f"JAX half passed; {reason}")
  pytest.skip(f"JAX half passed; {reason}")


@pytest.mark.slow
def test_bench_w1_tiny():
  """JAX's default surface_grid, its per-point loop and both PyTorch forms (own process) give
  the same losses; every variant is timed."""
  missing = _torch_missing()
  res = _load("bench_w1").main(["--tiny", "--no-record"] + (["--no-torch"] if missing else []))
  jax_names = ["JAX surface_grid (defaults)", "JAX per-point loop"]
  torch_names = ["PyTorch naive (Li et al. loop)", "PyTorch best"]
  assert set(res["checks"]) == set(jax_names + ([] if missing else torch_names))
  for name, (abs_diff, rel_diff) in res["checks"].items():
    assert np.isfinite(abs_diff) and rel_diff < 1e-4, (name, abs_diff, rel_diff)
    assert res["seconds_per_point"][name] > 0
  assert res["theoretical"] is None or res["theoretical"] > max(res["peaks"]["JAX"]) / 4
  if missing:
    _jax_part_ran_then_skip_torch(missing)


@pytest.mark.slow
def test_bench_w1_bf16_tiny():
  """Both bfloat16 paths (ours and PyTorch's autocast) run beside both float32 paths; each bf16
  loss is rounded (not its float32 twin) yet close to it, and the float32 twins agree."""
  missing = _torch_missing()
  res = _load("bench_w1_bf16").main(["--tiny", "--no-record"]
                                    + (["--no-torch"] if missing else []))
  assert all(t > 0 for t in res["seconds_per_point"].values())
  assert res["fp32_peak"] > 0 and res["bf16_peak"] > 0
  for (a, b), (_, rel_diff, _) in res["agreement"].items():
    if "bf16" in a + b or "bfloat16" in a + b:
      assert 1e-6 < rel_diff < 5e-2, (a, b, rel_diff)
    else:
      assert rel_diff < 1e-4, (a, b, rel_diff)
  if missing:
    _jax_part_ran_then_skip_torch(missing)
  assert len(res["agreement"]) == 4


@pytest.mark.slow
def test_bench_bf16_breakdown_tiny():
  """The one-core breakdown times both whole passes and every convolution form it names, and the
  PyTorch worker answers (where torch is installed); nothing pins the test process itself."""
  import os as _os
  before = _os.sched_getaffinity(0)
  missing = _torch_missing()
  res = _load("bench_bf16_breakdown").main(["--tiny", "--no-record"]
                                           + (["--no-torch"] if missing else []))
  assert _os.sched_getaffinity(0) == before
  assert len(res["whole"]) == 3 and "ours, bfloat16" in res["whole"]
  assert all(t > 0 for t in res["whole"].values())
  assert len(res["layers"]) == 4 and all(lay["impl"] for lay in res["layers"])
  if missing:
    _jax_part_ran_then_skip_torch(missing)
  assert len(res["torch"]["layers"]) == 4 and res["torch"]["forward"]["eager"] > 0


def test_cpu_features_line_names_present_absent_and_needed(monkeypatch):
  """The `cpu features:` line of every RESULTS block: which flags the CPU has and lacks, and the
  flags each chosen oneDNN kernel needs."""
  assert _BENCH_COMMON.isa_needs("brgconv:avx512_core") == "avx512f"
  assert _BENCH_COMMON.isa_needs("brgconv:avx512_core_bf16") == "avx512_bf16"
  assert _BENCH_COMMON.isa_needs("brgconv:avx512_core_amx") == "amx_tile, amx_bf16"
  assert _BENCH_COMMON.isa_needs("jit:avx2") == "avx2"
  assert _BENCH_COMMON.isa_needs("ref:any") == "none (reference kernel)"
  monkeypatch.setattr(_BENCH_COMMON, "cpu_flags", lambda: {"sse4_2", "avx", "avx2", "fma"})
  line = _BENCH_COMMON.cpu_features()
  assert line.startswith("avx2, fma present; avx512f, avx512_bf16, amx_tile, amx_bf16 absent"), line
  monkeypatch.setattr(_BENCH_COMMON, "cpu_flags", set)
  assert _BENCH_COMMON.cpu_features() == "unknown (no flags in /proc/cpuinfo)"
  assert "cpu features" in _BENCH_COMMON.machine_info()

def _record_problems(text: str) -> list[str]:
  """What is wrong with the blocks of a RESULTS.md: a block with two machine headers (two
  ``- date:`` or ``- cpu:`` lines) or whose ``Command:`` runs another script than its title's
  holds lines of another run."""
  import re

  problems = []
  for block in re.split(r"\n(?=## )", text)[1:]:
    title = block.split("\n", 1)[0]
    for key in ("- date: ", "- cpu: "):
      if sum(line.startswith(key) for line in block.split("\n")) > 1:
        problems.append(f"{title}: two '{key.strip()}' lines")
    script = re.match(r"## (bench_\w+\.py)", title)
    commands = set(re.findall(r"Command: `python benchmarks/(\w+\.py)", block))
    if script and commands and commands != {script.group(1)}:
      problems.append(f"{title}: its Command runs {sorted(commands)}")
  return problems


def test_results_blocks_each_hold_one_run():
  """Every block of benchmarks/RESULTS.md holds one run's lines (a merge of two branches that
  both appended to the file once interleaved blocks; this finds such damage), and the check
  finds two interleaved blocks."""
  with open(os.path.join(ROOT, "benchmarks", "RESULTS.md")) as f:
    text = f.read()
  assert _record_problems(text) == []
  header = ("## bench_{0}.py: t (d)\n\n- date: d\n- cpu: c\n\nx\n"
            "- Command: `python benchmarks/bench_{0}.py`\n")
  good = "# R\n\n" + header.format("a") + "\n" + header.format("b")
  assert _record_problems(good) == []
  mixed = good.replace("\n## bench_b.py: t (d)\n", "\n")  # b's lines now under a's title
  assert len(_record_problems(mixed)) == 3


@pytest.mark.slow
def test_bench_conv_layers_tiny():
  """Every distinct ResNet-20 convolution is found (8 shapes, 21 uses, 19 of them 3x3) and
  timed on XLA, on oneDNN where it is built (the script checks oneDNN against XLA) and on
  PyTorch."""
  missing = _torch_missing()
  res = _load("bench_conv_layers").main(["--tiny", "--no-record"]
                                        + (["--no-torch"] if missing else []))
  layers = res["layers"]
  assert len(layers) == 8 and sum(r["count"] for r in layers) == 21
  assert sum(r["count"] for r in layers if r["shape"]["k"] == 3) == 19
  for r in layers:
    assert r["xla"] > 0
    if "onednn" in r:
      assert r["onednn"] > 0 and r["impl"]
  if missing:
    _jax_part_ran_then_skip_torch(missing)
  assert all(r["torch_nchw"] > 0 and r["torch_cl"] > 0 for r in layers)
  assert res["torch_peak"] > 0


def test_ritz_convergence_on_a_known_spectrum():
  """The stopping test of bench_pyhessian.py finds the top eigenvalues of a known matrix."""
  import jax.numpy as jnp

  import landscape_jax as lj

  mod = _load("bench_pyhessian")
  rng = np.random.default_rng(0)
  evals = np.concatenate([[10.0, 7.0, 5.0], rng.uniform(-1, 1, 97)])
  q, _ = np.linalg.qr(rng.normal(size=(100, 100)))
  a = jnp.asarray((q * evals) @ q.T, jnp.float32)
  res = lj.lanczos(lambda v: a @ v, jnp.asarray(rng.normal(size=100), jnp.float32),
                   num_steps=40)
  steps, top = mod.ritz_convergence(res.alphas, res.betas, top_k=3, tol=1e-4)
  assert steps is not None and 3 <= steps < 40
  np.testing.assert_allclose(top, [10.0, 7.0, 5.0], rtol=1e-4)
  # an unreachable tolerance is reported as not converged
  steps, _ = mod.ritz_convergence(res.alphas[:5], res.betas[:4], top_k=3, tol=1e-12)
  assert steps is None


@pytest.mark.slow
def test_report_prints_the_results_and_records_them_under_title_and_date(tmp_path, capsys):
  common = _load("_common")
  lines = ["- machine block", "", "| a | b |", "Total 1 s."]
  path = str(tmp_path / "RESULTS.md")
  common.report(lines, title="bench_x.py: a run", info={"date": "D"}, record=False, path=path)
  assert capsys.readouterr().out == "| a | b |\nTotal 1 s.\n" and not os.path.exists(path)
  common.report(lines, title="bench_x.py: a run", info={"date": "D"}, record=True, path=path)
  assert capsys.readouterr().out.endswith(f"appended to {path}\n")
  with open(path) as f:
    assert f.read().endswith("\n## bench_x.py: a run (D)\n\n" + "\n".join(lines) + "\n")


def test_bench_auto_threshold_tiny():
  """Every oneDNN floor compiles, runs and matches XLA's step and products."""
  rows = _load("bench_auto_threshold").main(["--tiny", "--no-record"])
  assert [r[1] for r in rows] == ["0 (all oneDNN)", "2e7", "5e7", "none (all XLA)"]
  for r in rows:
    step, hvp = (float(d) for d in r[-1].split(" / "))
    assert step < 1e-4 and hvp < 1e-4, r


def test_bench_hvp_accuracy_tiny():
  """Every float32 product (folded or not, oneDNN or XLA, lj.hvp or the flat operator) is within
  1e-5 of the float64 product on a ResNet-8, and the distances are computed as stated."""
  mod = _load("bench_hvp_accuracy")
  assert mod.distances(np.array([1.0, 2.1]), np.array([1.0, 2.0])) == pytest.approx(
    (0.05, 0.1 / np.sqrt(5.0)))
  out = mod.main(["--tiny", "--no-record"])
  assert len(out) == 6
  for k, d in out.items():
    assert 0 < d["max"] < 1e-5 and 0 < d["l2"] < 1e-5, k


def test_bench_batchnorm_tiny():
  """The BatchNorm benchmark finds the model's layers, checks the library's BatchNorm against
  flax's, and gets PyTorch's answer where torch is installed; it leaves malloc alone here."""
  from landscape_jax.backends.cpu import malloc
  before = malloc._applied
  missing = _torch_missing()
  out = _load("bench_batchnorm").main(["--tiny", "--no-record"]
                                      + (["--no-torch"] if missing else []))
  assert malloc._applied == before
  assert sum(out["layers"].values()) == 9  # ResNet-8: stem, 3 blocks of 2
  assert max(out["agree"].values()) < 1e-5
  assert all(t > 0 for b in out["best"].values() for t in b.values())
  if missing:
    _jax_part_ran_then_skip_torch(missing)
  assert max(out["torch_agree"].values()) < 1e-3


def test_bench_malloc_tiny():
  """Both settings run in their own processes and give the same results."""
  rows = _load("bench_malloc").main(["--tiny", "--no-record"])
  assert len(rows) == 4 and all(r[-1] == "yes" for r in rows)
  assert {r[2] for r in rows} == {"kept (LANDSCAPE_JAX_KEEP_FREED_MEMORY=1)", "returned (default)"}


def test_bench_pyhessian_marginal_product():
  """One more product is the two loops' difference over their difference in products."""
  mod = _load("bench_pyhessian")
  med = {mod.loop_key(4): 1.0, mod.loop_key(12): 2.6}
  assert mod.marginal_product(med, 4) == pytest.approx(0.2)


def test_bench_pyhessian_tiny():
  """landscape-jax's Lanczos and Hutchinson agree with PyHessian on the same weights and batch."""
  missing = _torch_missing()
  out = _load("bench_pyhessian").main(["--tiny", "--no-record"]
                                      + (["--no-torch"] if missing else []))
  top = np.asarray(out["lj_eig"]["top"])
  assert np.all(np.isfinite(top)) and np.all(np.diff(top) <= 0) and top[0] > 0
  assert out["hvp_s"]["marginal"] > 0 and out["hvp_s"]["in_loop"] > 0
  assert np.isfinite(out["lj_trace"]["mean"]) and out["lj_trace"]["stderr"] > 0
  if missing:
    _jax_part_ran_then_skip_torch(missing)
  if "ph_eig" not in out:
    pytest.skip("pyhessian is not installed (pip install pyhessian): PyHessian half skipped")
  assert abs(out["ph_eig"]["top"][0] - top[0]) / top[0] < 0.05
  assert out["ph_trace"]["z"] < 4
  assert out["ph_eig"]["hvps"] > 0 and out["ph_trace"]["hvps"] > 0
  (ours, theirs), = out["hvp_pairs"]["pairs"]  # --tiny: one paired round
  assert ours > 0 and theirs > 0
  assert out["hvp_pairs"]["median_speedup"] == pytest.approx(theirs / ours)


@pytest.mark.slow
def test_bench_error_control_tiny():
  """Error control on a trained ResNet-8: the three estimators run; the anchored ones stay
  within 3 targets (tol, or tol + rtol |loss|) of the exact surface, and the relative part never
  needs more examples than the absolute tolerance alone."""
  out = _load("bench_error_control").main(["--tiny", "--no-record"])
  assert len(out) == 3
  anchored = next(v for k, v in out.items() if k.startswith("anchored") and "rtol" not in k)
  relative = next(v for k, v in out.items() if "rtol" in k)
  plain = next(v for k, v in out.items() if k.startswith("plain"))
  assert anchored["max_dev"] <= 3 * 0.05
  assert relative["max_dev_targets"] <= 3
  assert relative["mean_examples"] <= anchored["mean_examples"]
  for v in (anchored, relative, plain):
    assert v["speedup"] > 0 and 0 < v["mean_examples"] <= 1500


@pytest.mark.slow
def test_accelerator_script_dry_run():
  """benchmarks/accelerator.sh --dry-run: installs nothing, collects the accelerator tests, runs
  the W1 benchmark at shrunk sizes on the CPU and records nothing."""
  import subprocess
  import sys

  results = os.path.join(ROOT, "benchmarks", "RESULTS.md")
  before = os.path.getsize(results)
  env = dict(os.environ, PYTHON=sys.executable)
  env["XLA_FLAGS"] = conftest.child_xla_flags()  # one CPU device, as on a one-GPU machine
  proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "accelerator.sh"), "--dry-run"],
                        capture_output=True, text=True, env=env, timeout=600, check=False)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-3000:]
  assert "tests collected" in out and "DRY RUN" in out and "status 0" in out, out[-3000:]
  assert "surface_grid vmap, chunk" in out
  assert os.path.getsize(results) == before


def test_bench_import_loads_nothing_heavy():
  """`import landscape_jax` (timed by bench_import in fresh interpreters) loads none of jax,
  matplotlib, orbax, scipy, ml_collections or TensorFlow; the timed statements all run."""
  res = _load("bench_import").main(["--repeats=1", "--no-record"])
  assert res["loaded"] == []
  assert set(res["medians"]) == {"landscape_jax", "jax", "first core use", "first plot"}
  assert all(v > 0 for v in res["medians"].values())


@pytest.mark.slow
def test_bench_train_vs_torch_tiny():
  """Same losses step by step (float32 rounding only), every epoch timed; Garipov et al.'s half
  needs their repository ($LANDSCAPE_JAX_GARIPOV_REPO) and is skipped without it."""
  have_torch, why = _BENCH_COMMON.torch_installed()
  if not have_torch:  # both comparisons are against PyTorch: nothing to check without it
    pytest.skip(why)
  out = _load("bench_train_vs_torch").main(["--tiny", "--no-record"])
  sgd = out["sgd"]
  assert len(sgd["lj_losses"]) == len(sgd["torch_losses"]) == 2
  assert np.all(np.isfinite(sgd["lj_losses"])) and max(sgd["loss_rel_diff"]) < 1e-4, sgd
  assert sgd["params"] == sgd["torch_params"]
  assert sgd["epoch_equal_loop"]  # the compiled epoch trains as the loop of train_step
  assert min(sgd["lj_epoch_s"]) > 0 and min(sgd["lj_loop_s"]) > 0
  assert min(sgd["torch_epoch_s"]) > 0
  curve = out["curve"]
  assert curve["epoch_equal_train_curve"] and min(curve["lj_epoch_s"]) > 0
  assert np.all(np.isfinite(curve["lj_losses"]))
  if "torch_losses" not in curve:
    pytest.skip("JAX and SGD halves passed; Garipov et al.'s half skipped: set "
                "LANDSCAPE_JAX_GARIPOV_REPO to a clone of timgaripov/dnn-mode-connectivity")
  assert max(curve["loss_rel_diff"]) < 1e-4, curve
  assert curve["params"] == curve["torch_trainable"] == curve["torch_base_params"]
  assert min(curve["torch_epoch_s"]) > 0


@pytest.mark.slow
def test_epoch_profile_reads_the_program_and_its_trace():
  """bench_epoch_profile's pieces against hand computations: the FLOPs and attributes it reads
  from a compiled program's oneDNN calls (a strided 3x3 convolution and both derivatives), the
  union of overlapping trace intervals, and a tiny run whose parts add up to its epoch."""
  from landscape_jax.backends.cpu import onednn_autodiff, onednn_build

  if not onednn_build.available():
    pytest.skip(f"oneDNN unavailable: {onednn_build.unavailable_reason()}")
  import jax
  import jax.numpy as jnp

  bench = _load("bench_epoch_profile")
  x, w = jnp.ones((2, 9, 9, 3)), jnp.ones((3, 3, 3, 5))

  def loss(x, w):
    return jnp.sum(onednn_autodiff.conv(x, w, strides=2, padding=(1, 0, 1, 0)) ** 2)

  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
  calls = [v for v in bench.program_ops(hlo).values() if "target" in v]
  assert sorted(v["kind"] for v in calls) == ["oneDNN backward-data", "oneDNN backward-weights",
                                              "oneDNN forward"]
  flops = 2 * (2 * 4 * 4 * 5) * (3 * 3 * 3)  # y: 2 x 4 x 4 x 5 ((9 + 1 - 3) // 2 + 1), 27 taps
  assert all(v["flops"] == flops for v in calls)
  for v in calls:
    np.testing.assert_array_equal(v["attrs"]["strides"], [2, 2])
    np.testing.assert_array_equal(v["attrs"]["padding"], [1, 0, 1, 0])
  assert bench.busy_time([{"ts": 0.0, "dur": 2.0}, {"ts": 1.0, "dur": 2.0},
                          {"ts": 5.0, "dur": 1.0}]) == 4.0
  res = bench.main(["--tiny", "--no-record"])
  for r in res["results"]:
    shares = [float(row[2].rstrip("%")) for row in r["rows"] if row[2].endswith("%")]
    assert abs(sum(shares[:-1]) - 100) <= len(shares)  # parts + overlap + idle = the epoch
    assert r["alone"][-1][2] == sum(row[2] for row in r["alone"][:-1]) > 0
