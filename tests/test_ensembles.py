"""Fast Geometric Ensembling, SWA and ensemble metrics (Garipov et al. 2018)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape_jax as lj
from landscape_jax.methods import ensembles


def _reference_lr(epoch, i, n, *, lr1, lr2, c):
  """The formula of the reference code (utils.cyclic_learning_rate), written out."""
  s = ((epoch % c) + i / n) / c
  if s < 0.5:
    return lr1 * (1.0 - 2.0 * s) + lr2 * 2.0 * s
  return lr1 * (2.0 * s - 1.0) + lr2 * (2.0 - 2.0 * s)


@pytest.mark.parametrize("c", [2, 4, 6])
def test_cyclic_schedule_matches_formula(c):
  n = 7
  sched = ensembles.cyclic_schedule(lr1=0.05, lr2=1e-4, cycle_epochs=c, steps_per_epoch=n)
  steps = np.arange(3 * c * n)
  got = np.asarray(jax.vmap(sched)(steps))
  ref = np.array([_reference_lr(s // n, s % n, n, lr1=0.05, lr2=1e-4, c=c) for s in steps])
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-8)
  assert got[0] == pytest.approx(0.05)
  # a snapshot is taken after the epoch that ends where lr reaches lr_2 (mid-cycle)
  snaps = ensembles.fge_snapshot_epochs(3 * c, c)
  assert snaps == [k * c + c // 2 - 1 for k in range(3)]
  for e in snaps:
    end_of_epoch = _reference_lr(e + 1, 0, n, lr1=0.05, lr2=1e-4, c=c)
    assert end_of_epoch == pytest.approx(1e-4)
  with pytest.raises(ValueError, match="even"):
    ensembles.cyclic_schedule(cycle_epochs=3, steps_per_epoch=n)


def test_evaluate_ensemble_is_mean_of_probabilities(tiny_mlp, digits_test):
  model, variables = tiny_mlp
  members = ensembles.stack_members([
    jax.tree.map(lambda x, k=k: x * (1.0 + 0.3 * k), variables["params"]) for k in range(3)])
  res = ensembles.evaluate_ensemble(model, members, digits_test, batch_size=100)
  x = lj.data.normalize_images(digits_test.images, digits_test.mean, digits_test.std)
  probs = np.stack([np.asarray(jax.nn.softmax(model.apply({"params": p}, x), -1), np.float64)
                    for p in lj.trees.unstack(members)])
  y = digits_test.labels
  for k in range(1, 4):
    mean_p = probs[:k].mean(0)
    np.testing.assert_allclose(res["size_loss"][k - 1],
                               -np.mean(np.log(mean_p[np.arange(len(y)), y])), rtol=1e-4)
    np.testing.assert_allclose(res["size_accuracy"][k - 1], np.mean(mean_p.argmax(-1) == y))
  member_loss = -np.log(probs[:, np.arange(len(y)), y]).mean(-1)
  np.testing.assert_allclose(res["member_loss"], member_loss, rtol=1e-4)
  np.testing.assert_allclose(res["loss"], res["size_loss"][-1])


def test_swa_average():
  members = {"w": jnp.arange(12.0).reshape(3, 4)}
  np.testing.assert_allclose(ensembles.swa_average(members)["w"], [4.0, 5.0, 6.0, 7.0])


def _direct_ensemble(model, members, data):
  """Ensemble metrics computed independently: numpy softmax of every member's logits in float64,
  mean of the probabilities, -log of the true class and argmax."""
  x = lj.data.normalize_images(data.images, data.mean, data.std)
  logits = np.stack([np.asarray(model.apply({"params": p}, x), np.float64)
                     for p in lj.trees.unstack(members)])                       # (K, N, C)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  y, rows = data.labels, np.arange(len(data.labels))
  mean_p = probs.mean(0)
  return {"loss": -np.mean(np.log(mean_p[rows, y])),
          "accuracy": np.mean(mean_p.argmax(-1) == y),
          "member_loss": -np.log(probs[:, rows, y]).mean(-1),
          "member_accuracy": (probs.argmax(-1) == y).mean(-1)}


@pytest.mark.slow
def test_fge_ensemble_loss_is_bounded_by_its_members(digits_train, digits_test):
  """Jensen: -log of the mean probability is at most the mean of the members' -log p, example
  by example, so the ensemble's cross-entropy is at most the MEAN member loss (nothing guarantees
  that it beats the best member). The metrics are also checked against a direct computation."""
  model = lj.get_model("mlp", num_classes=10, features=(32,))
  loss_fn = lj.make_loss_fn(model, mean=digits_train.mean, std=digits_train.std)
  p = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  settings = lj.TrainSettings(epochs=20, batch_size=64, learning_rate=0.05, weight_decay=5e-4)
  p, _, _ = ensembles.train_sgd(loss_fn, p, digits_train, settings=settings, progress=False)
  fge = lj.FGESettings(cycles=6, cycle_epochs=4, lr1=0.2, lr2=1e-3, batch_size=64,
                       weight_decay=5e-4)
  members, hist = ensembles.fast_geometric_ensemble(loss_fn, p, digits_train, settings=fge,
                                                    progress=False)
  assert jax.tree.leaves(members)[0].shape[0] == 6 and len(hist) == 24
  res = ensembles.evaluate_ensemble(model, members, digits_test)
  assert res["loss"] <= res["member_loss"].mean() + 1e-6
  ref = _direct_ensemble(model, members, digits_test)
  np.testing.assert_allclose(res["loss"], ref["loss"], rtol=1e-4)
  np.testing.assert_allclose(res["accuracy"], ref["accuracy"], atol=1e-6)
  np.testing.assert_allclose(res["member_loss"], ref["member_loss"], rtol=1e-4)
  np.testing.assert_allclose(res["member_accuracy"], ref["member_accuracy"], atol=1e-6)
  # the members differ (FGE snapshots), so the bound is not met trivially by equal members
  assert np.ptp(ref["member_loss"]) > 0
  # SWA: the average of the snapshots is a good model too
  swa_params = ensembles.swa_average(members)
  swa = lj.evaluate(lj.evaluation.inference_apply(model), {"params": swa_params},
                    digits_test.images, digits_test.labels, mean=digits_test.mean,
                    std=digits_test.std)
  assert swa["loss"] < res["member_loss"].mean()


class _Killed(Exception):
  pass


@pytest.mark.parametrize("kill_after", [2, 4])  # between snapshots / right after a snapshot
def test_fge_resumes_exactly_with_its_snapshots(digits_train, tmp_path, kill_after):
  """An FGE run interrupted after some epochs and rerun in the same workdir returns the same
  members and history, bit for bit, as an uninterrupted run; the finished snapshots are read back
  (checkpoints every 2 epochs, so epochs after the last checkpoint are redone)."""
  model = lj.get_model("mlp", num_classes=10, features=(16,))
  loss_fn = lj.make_loss_fn(model, mean=digits_train.mean, std=digits_train.std)
  p = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  settings = lj.FGESettings(cycles=3, cycle_epochs=2, lr1=0.1, lr2=1e-3, batch_size=128,
                            weight_decay=5e-4, seed=1)
  ref, ref_hist = ensembles.fast_geometric_ensemble(loss_fn, p, digits_train, settings=settings,
                                                    progress=False)

  def kill(epoch, params, record):
    if epoch + 1 == kill_after + 1:  # one epoch past a checkpoint: that epoch is redone
      raise _Killed

  work = str(tmp_path / "fge")
  with pytest.raises(_Killed):
    sgd = lj.TrainSettings(
      epochs=6, batch_size=128, weight_decay=5e-4, seed=1, checkpoint_every=2,
      learning_rate=ensembles.cyclic_schedule(lr1=0.1, lr2=1e-3, cycle_epochs=2,
                                              steps_per_epoch=len(digits_train) // 128))
    assert sgd == dataclasses.replace(settings.sgd_settings(len(digits_train) // 128),
                                      checkpoint_every=2, learning_rate=sgd.learning_rate)
    ensembles.train_sgd(loss_fn, p, digits_train, settings=sgd,
                        snapshot_epochs=ensembles.fge_snapshot_epochs(6, 2), progress=False,
                        desc="fge", workdir=work, callback=kill)
  assert lj.checkpoints.list_steps(f"{work}/sgd_snapshots") == [
    e for e in ensembles.fge_snapshot_epochs(6, 2) if e <= kill_after]
  every2 = dataclasses.replace(settings, checkpoint_every=2)
  got, hist = ensembles.fast_geometric_ensemble(loss_fn, p, digits_train, settings=every2,
                                                workdir=work, progress=False)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), got, ref)
  assert hist == ref_hist
  # another configuration, or other starting parameters, in the same workdir is refused
  with pytest.raises(ValueError, match="different configuration.*learning_rate"):
    ensembles.fast_geometric_ensemble(loss_fn, p, digits_train,
                                      settings=dataclasses.replace(every2, lr1=0.2), workdir=work,
                                      progress=False)
  other = jax.tree.map(lambda x: x + 1.0, p)
  with pytest.raises(ValueError, match="different configuration.*init_sha256"):
    ensembles.fast_geometric_ensemble(loss_fn, other, digits_train, settings=every2, workdir=work,
                                      progress=False)
