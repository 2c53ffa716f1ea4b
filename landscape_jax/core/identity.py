"""Exact identities of what computed a result: parameter bytes, functions and the data they hold.

Every resumable result of the library (surface and curve stores, curve training, SGD / FGE runs,
the tour) records the identity of its inputs and refuses to resume from results whose identity
differs. An identity is exact, never a rounded summary:

* `tree_digest(tree)`: sha256 over every leaf's key path, shape, dtype and raw bytes, in leaf order.
  Any change of any element, a swap of two leaves or a permutation of units changes it.
* `callable_identity(fn)`: a JSON-able description of a function and of everything it holds:
  ``{"name": "<qualname>", "code": sha256, "arrays": sha256}``. ``code`` covers the
  source (or bytecode) of every function reached, the values of its scalar / string
  configuration, the classes and field values of dataclasses (Flax modules, Equinox modules); and
  ``arrays`` the bytes of every array reached, through `jax.tree_util.Partial` /
  `functools.partial` arguments, closure cells, default arguments, bound-method owners and
  dataclass fields. So two metric functions built from the same code over other data, labels or
  BatchNorm statistics have different identities.

Objects whose content cannot be inspected (an open file, a database handle, an object of an
unknown class) make `callable_identity` raise `IdentityError` naming where they were found; pass a
name for them (``identity="my-dataset-v2"``, which you guarantee identifies them) to record that
name in their place. An object can also describe itself with a ``__landscape_identity__()``
method returning arrays, strings and numbers.

* `traced_identity(fn, *args)`: sha256 of the program JAX traces from ``fn(*args)`` at the
  arguments' shapes and dtypes (`jax.make_jaxpr`; the text of the jaxpr with memory addresses
  removed, plus the bytes of the constants it captured). It sees what the source walk above
  cannot: the model's forward pass (relu or tanh), helpers in other modules, module-level
  constants, lambdas, static pytree data, dtypes (float32 or bfloat16), and the hyperparameters and
  update code of an optax transformation (`optimizer_identity`). Given ``args=``,
  `callable_identity` adds it as ``"traced"``. Cost: one trace (no compilation), cached per
  function object and argument shapes (its cost: benchmarks/bench_identity.py, recorded in
  benchmarks/RESULTS.md).

The traced program is what JAX would compile, so it changes with the library versions that build
it (JAX, Flax, optax, landscape-jax, the backend's custom calls): every identity records
`versions()`, and a refusal caused by a traced program that differs names the versions that wrote
the result and the ones running now. What no identity sees: the code that runs *outside* the
traced program (host callbacks' bodies are covered only by their source, see above), and a
compiler (XLA) change that rounds differently without changing the traced program (a resume across
such versions is logged, not refused). Module-level functions and classes reached only through
the source walk are identified by their own source, not by the source of the functions they call;
the traced identity covers those.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import inspect
import re
import threading
import types
from collections import OrderedDict
from typing import Any

import jax
import numpy as np

PyTree = Any


class IdentityError(ValueError):
  """The identity of a function (or something it holds) cannot be determined."""


def _array_bytes(x) -> np.ndarray:
  if isinstance(x, jax.core.Tracer):
    raise IdentityError("Cannot take the identity of a traced value (inside jit/vmap); call "
                        "this outside of transformed functions.")
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.ascontiguousarray(np.asarray(x))


def _update_array(h, x) -> None:
  a = _array_bytes(x)
  h.update(f"{a.shape}|{a.dtype.str}|".encode())
  h.update(a.tobytes())


def tree_digest(tree: PyTree) -> str:
  """sha256 of a pytree: every leaf's key path, shape, dtype and bytes, in leaf order.

  Exact: any changed element, swapped leaves or permuted units give another digest; the same
  values in the same structure always give the same digest, across processes and machines.
  """
  h = hashlib.sha256()
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  h.update(f"{len(leaves)} leaves|".encode())
  for path, leaf in leaves:
    h.update(jax.tree_util.keystr(path).encode())
    if leaf is None or isinstance(leaf, (bool, int, float, complex, str)):
      h.update(f"scalar:{leaf!r}|".encode())
    else:
      _update_array(h, leaf)
  return h.hexdigest()


def _is_array(x) -> bool:
  return isinstance(x, (np.ndarray, np.generic, jax.Array))


def _code_digest(code: types.CodeType) -> str:
  """sha256 of a code object's bytecode, names and constants (nested code objects included)."""
  h = hashlib.sha256(code.co_code)
  h.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
  for const in code.co_consts:
    h.update((_code_digest(const) if isinstance(const, types.CodeType) else repr(const)).encode())
  return h.hexdigest()


class _Walker:
  """Feeds a function and everything it holds into two hashes: code/config and array bytes."""

  def __init__(self, fallback: str | None):
    self.code = hashlib.sha256()
    self.arrays = hashlib.sha256()
    self.fallback = fallback
    self.unidentified: list[str] = []
    self._seen: dict[int, int] = {}
    self._keep: list[Any] = []  # ids are only unique while the objects live

  def token(self, *parts) -> None:
    self.code.update(("|".join(str(p) for p in parts) + ";").encode())

  def unknown(self, obj, where: str) -> None:
    what = f"{where} (a {type(obj).__module__}.{type(obj).__qualname__})"
    if self.fallback is None:
      raise IdentityError(
        f"Cannot determine the identity of {what}: its content cannot be inspected, so a stored "
        "result could not be told apart from one computed with other data. Pass "
        "identity='<a name you guarantee identifies it>' to resume with it, or hold its arrays "
        "in the function's arguments (jax.tree_util.Partial) or closure.")
    self.unidentified.append(what)
    self.token("unidentified", type(obj).__qualname__)

  def walk(self, obj, where: str) -> None:
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
      self.token(type(obj).__name__, repr(obj))
      return
    if _is_array(obj):
      self.token("array")
      _update_array(self.arrays, obj)
      return
    if isinstance(obj, (type, types.ModuleType)):
      self.token("type", getattr(obj, "__module__", ""), getattr(obj, "__qualname__",
                                                                  getattr(obj, "__name__", "")))
      return
    if isinstance(obj, enum.Enum):
      self.token("enum", type(obj).__qualname__, obj.name)
      return
    if isinstance(obj, np.dtype):
      self.token("dtype", obj.str)
      return
    key = id(obj)
    if key in self._seen:  # a cycle or a shared object: refer to its first visit
      self.token("seen", self._seen[key])
      return
    self._seen[key] = len(self._seen)
    self._keep.append(obj)
    custom = getattr(type(obj), "__landscape_identity__", None)
    if custom is not None:
      self.token("custom", type(obj).__qualname__)
      self.walk(custom(obj), f"{where}.__landscape_identity__()")
      return
    if isinstance(obj, (jax.tree_util.Partial, functools.partial)):
      self.token("partial")
      self.walk(obj.func, f"{where}.func")
      self.walk(tuple(obj.args), f"{where}.args")
      self.walk(dict(obj.keywords), f"{where}.keywords")
      return
    if isinstance(obj, types.MethodType):
      self.token("method")
      self.walk(obj.__func__, where)
      self.walk(obj.__self__, f"{where}.__self__")
      return
    if isinstance(obj, types.FunctionType):
      self.function(obj, where)
      return
    if isinstance(obj, (types.BuiltinFunctionType, np.ufunc)):
      self.token("builtin", getattr(obj, "__module__", ""), getattr(obj, "__qualname__",
                                                                     obj.__name__))
      return
    if isinstance(obj, dict):
      self.token("dict", len(obj))
      for k in sorted(obj, key=repr):
        self.walk(k, where)
        self.walk(obj[k], f"{where}[{k!r}]")
      return
    if isinstance(obj, (tuple, list)):
      self.token(type(obj).__qualname__, len(obj))
      for i, v in enumerate(obj):
        self.walk(v, f"{where}[{i}]")
      return
    if isinstance(obj, (set, frozenset)):
      self.token("set", len(obj))
      for v in sorted(obj, key=repr):
        self.walk(v, where)
      return
    if dataclasses.is_dataclass(obj):
      self.token("dataclass", type(obj).__module__, type(obj).__qualname__)
      for f in dataclasses.fields(obj):
        if f.name in ("parent", "scope"):  # a Flax module's place in a module tree, not its config
          continue
        self.token("field", f.name)
        self.walk(getattr(obj, f.name, None), f"{where}.{f.name}")
      return
    if type(obj).__name__ == "_HashableCallableShim":  # how Partial holds a functools.partial
      self.walk(obj.fun, where)
      return
    wrapped = getattr(obj, "__wrapped__", None)
    if wrapped is not None and wrapped is not obj:  # jax.jit, custom_jvp, functools.wraps
      self.token("wrapped", type(obj).__qualname__)
      self.walk(wrapped, f"{where}.__wrapped__")
      return
    if isinstance(obj, jax.sharding.Mesh):
      self.token("mesh", obj.axis_names, tuple(obj.devices.shape))
      return
    leaves, treedef = jax.tree_util.tree_flatten(obj)
    if not (len(leaves) == 1 and leaves[0] is obj):  # a registered pytree node
      self.token("pytree", type(obj).__module__, type(obj).__qualname__, treedef.num_leaves)
      for i, leaf in enumerate(leaves):
        self.walk(leaf, f"{where}<leaf {i}>")
      return
    self.unknown(obj, where)

  def function(self, fn: types.FunctionType, where: str) -> None:
    # the module is left out: a script's functions live in __main__ when run, elsewhere imported
    self.token("function", fn.__qualname__)
    try:
      source = inspect.getsource(fn)
      self.token("source", hashlib.sha256(source.encode()).hexdigest())
    except (OSError, TypeError):
      self.token("bytecode", _code_digest(fn.__code__))
    if fn.__defaults__:
      self.walk(fn.__defaults__, f"{where} defaults")
    if fn.__kwdefaults__:
      self.walk(fn.__kwdefaults__, f"{where} keyword defaults")
    names = fn.__code__.co_freevars
    for name, cell in zip(names, fn.__closure__ or (), strict=True):
      self.token("cell", name)
      try:
        value = cell.cell_contents
      except ValueError:  # an empty cell
        self.token("empty")
        continue
      self.walk(value, f"{where} (closure variable '{name}')")


def callable_identity(fn, *, identity: str | None = None, name: str = "function",
                      args: tuple | None = None) -> dict:
  """The exact identity of a function and of everything it holds (see the module docstring).

  Args:
    fn: any callable (a plain function, a closure, a `jax.tree_util.Partial`, a jitted function, a
      bound method, a Flax / Equinox module, ...).
    identity: a name you guarantee identifies whatever cannot be inspected; without it such an
      object raises `IdentityError`.
    name: how to call `fn` in error messages (e.g. "metric_fn").
    args: the arguments (arrays or `jax.ShapeDtypeStruct`s) `fn` is called with; when given,
      ``"traced"`` holds `traced_identity` of ``fn(*args)``, which sees the code the source walk
      does not follow (helpers, globals, the model's forward pass, static pytree data).

  Returns:
    ``{"name": "<qualname>", "code": sha256 hex, "arrays": sha256 hex}``, plus
    ``"traced": sha256 hex`` with `args`, and ``"identity": identity`` when `identity` was used
    (JSON-able, compared key by key on resume).
  """
  walker = _Walker(identity)
  walker.walk(fn, name)
  target = fn
  while True:
    if isinstance(target, (jax.tree_util.Partial, functools.partial)):
      target = target.func
    elif type(target).__name__ == "_HashableCallableShim":
      target = target.fun
    else:
      break
  label = getattr(target, "__qualname__", type(target).__qualname__)
  out = {"name": label, "code": walker.code.hexdigest(), "arrays": walker.arrays.hexdigest()}
  if args is not None:
    out["traced"] = traced_identity(fn, *args, name=name)
  if identity is not None:
    out["identity"] = str(identity)
  return out


_ADDRESS = re.compile(r"(?: at)? 0x[0-9a-fA-F]+")
_TRACE_CACHE: OrderedDict = OrderedDict()
_TRACE_LOCK = threading.Lock()
_TRACE_CACHE_SIZE = 128


def versions() -> dict[str, str]:
  """The versions of what builds a traced program: JAX, jaxlib, Flax, optax, landscape-jax and
  the default backend's platform; recorded beside every traced identity."""
  import importlib.metadata as md

  out = {"jax": jax.__version__}
  for dist in ("jaxlib", "flax", "optax", "landscape-jax"):
    try:
      out[dist] = md.version(dist)
    except md.PackageNotFoundError:
      out[dist] = "absent"
  out["platform"] = jax.default_backend()
  return out


def _abstract(leaf):
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return leaf
  if _is_array(leaf):
    return jax.ShapeDtypeStruct(np.shape(leaf), jax.numpy.result_type(leaf)
                                if not hasattr(leaf, "dtype") else leaf.dtype)
  return None


def _cache_key(leaves, treedef):
  parts = []
  for leaf in leaves:
    a = _abstract(leaf)
    parts.append(("a", a.shape, str(a.dtype)) if a is not None else ("o", id(leaf)))
  return (treedef, tuple(parts))


def normalized_jaxpr_text(closed) -> str:
  """The text of a (closed) jaxpr without memory addresses (``<function f at 0x7f..>``), which
  differ from run to run without changing the numbers."""
  return _ADDRESS.sub("", str(closed.jaxpr if hasattr(closed, "jaxpr") else closed))


def traced_identity(fn, *args, name: str = "function") -> str:
  """sha256 of the program JAX traces from ``fn(*args)``, at the shapes and dtypes of `args`.

  `fn` may be a pytree (a `jax.tree_util.Partial`): its array leaves, like those of `args`, become
  abstract inputs, so only their shapes and dtypes enter (their bytes are `tree_digest`'s and
  `callable_identity`'s ``arrays``); its static parts (the function, Python scalars, static pytree
  auxiliary data) shape the program. Arrays the trace captures as constants (closures, module
  globals) enter with their bytes. Memory addresses in the text are removed; everything else of
  the jaxpr (primitives, their parameters, literals, dtypes, shapes, nested jaxprs) is hashed.

  Cached per function object and argument shapes (as `jax.jit` caches its traces: a module-level
  constant changed inside one process after the first call is not seen by either).

  Raises:
    IdentityError: `fn` cannot be traced at these shapes (the message gives JAX's reason).
  """
  leaves, treedef = jax.tree_util.tree_flatten((fn, args))
  try:
    key = _cache_key(leaves, treedef)
    hash(key)
  except TypeError:  # unhashable static data: trace every time
    key = None
  if key is not None:
    with _TRACE_LOCK:
      hit = _TRACE_CACHE.get(key)
      if hit is not None:
        _TRACE_CACHE.move_to_end(key)
        return hit[0]
  is_arr = [_abstract(x) is not None for x in leaves]

  def flat(*arrays):
    it = iter(arrays)
    full = [next(it) if a else x for x, a in zip(leaves, is_arr, strict=True)]
    f, a = jax.tree_util.tree_unflatten(treedef, full)
    return f(*a)

  try:
    closed = jax.make_jaxpr(flat)(*[_abstract(x) for x, a in zip(leaves, is_arr, strict=True) if a])
  except Exception as e:  # any tracing failure is reported with its cause
    raise IdentityError(
      f"Cannot trace {name} at its argument shapes to identify what it computes: "
      f"{type(e).__name__}: {str(e)[:500]}") from e
  h = hashlib.sha256(normalized_jaxpr_text(closed).encode())
  for c in closed.consts:
    h.update(b"const|")
    if _is_array(c):
      _update_array(h, c)
    else:
      h.update(repr(c).encode())
  digest = h.hexdigest()
  if key is not None:
    with _TRACE_LOCK:
      _TRACE_CACHE[key] = (digest, leaves)  # the leaves keep the ids of the key alive
      while len(_TRACE_CACHE) > _TRACE_CACHE_SIZE:
        _TRACE_CACHE.popitem(last=False)
  return digest


def optimizer_identity(tx, params: PyTree) -> dict:
  """The identity of an optax transformation for `params`: its state's structure and the traced
  programs of ``tx.init(params)`` and ``tx.update(grads, state, params)``.

  The traced update sees the transformation's hyperparameters (learning rate, momentum, decay,
  the schedule evaluated on the step count) and its update code (sgd or adam), so a change of any
  of them changes it.

  Returns:
    ``{"init": sha256, "update": sha256, "state": str}`` (`state` is the state's tree structure,
    so that a message can say the optimiser's state differs).
  """
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)
  state = jax.eval_shape(tx.init, shapes)
  structure = str(jax.tree.structure(state))
  return {
    # tx.init / tx.update themselves (stable objects), so that the trace cache serves reruns
    "init": traced_identity(tx.init, shapes, name="optimizer.init"),
    "update": traced_identity(tx.update, shapes, state, shapes, name="optimizer.update"),
    "state": hashlib.sha256(_ADDRESS.sub("", structure).encode()).hexdigest(),
  }


def describe_differences(differences: list[str]) -> str:
  """Human-readable reasons for dotted configuration keys that differ (see `store`)."""
  reasons = {
    "arrays": "holds other arrays (parameters, data, labels or BatchNorm statistics)",
    "code": "is other code or configuration",
    "name": "is another function",
    "identity": "was given another identity name",
    "sha256": "has other bytes",
    "traced": "computes something else: its traced program differs (model code, a helper, a "
              "module-level constant, static pytree data, a dtype, or the library versions)",
    "init": "is another optimiser (its traced init differs)",
    "update": "is another optimiser or has other hyperparameters (its traced update differs)",
    "state": "is another optimiser (its state has another structure)",
  }
  out = []
  for d in differences:
    last = d.rsplit(".", 1)[-1]
    why = next((r for k, r in reasons.items() if last == k or last.endswith("_" + k)), None)
    out.append(f"{d} ({why})" if why else d)
  return ", ".join(out)


__all__ = ["IdentityError", "callable_identity", "describe_differences", "normalized_jaxpr_text",
           "optimizer_identity", "traced_identity", "tree_digest", "versions"]
