"""A 2-D landscape as a VTK PolyData XML file (.vtp) for ParaView, as the reference h52vtp of
Li et al. 2018 ("Visualizing the Loss Landscape of Neural Nets") writes it.

Grid results follow the library convention z[i, j] = f(xs[i], ys[j]). The file is written
atomically (`core.fileio`).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import numpy as np

from landscape_jax.core import fileio
from landscape_jax.plotting.common import check_surface

__all__ = ["export_vtp", "vtp_values"]


def vtp_values(z, *, log: bool = False, zmax: float | None = None) -> np.ndarray:
  """The heights written by `export_vtp`: clip at zmax, then log(z + 0.1) when `log`.

  Follows the reference h52vtp of Li et al. 2018 (clip first, then log(z + 0.1)). Non-finite
  values (diverged points) become the largest finite value after clipping, so the surface stays
  closed; values with z + 0.1 <= 0 become the smallest finite log value.
  """
  v = np.array(z, dtype=np.float64)
  finite = np.isfinite(v)
  if not finite.any():
    raise ValueError(
      "export_vtp: every value is NaN or inf; there is no surface to export. Check the grid"
      " range (shrink it) or the model."
    )
  if zmax is not None:
    v = np.where(finite, np.minimum(v, zmax), v)
  v = np.where(finite, v, v[finite].max())
  if log:
    ok = v + 0.1 > 0
    if not ok.any():
      raise ValueError("export_vtp(log=True): every value is <= -0.1; use log=False.")
    logged = np.log(np.where(ok, v + 0.1, 1.0))
    v = np.where(ok, logged, logged[ok].min())
  return v


def export_vtp(
  path,
  xs,
  ys,
  z,
  *,
  log: bool = False,
  zmax: float | None = None,
  name: str = "loss",
) -> list[str]:
  """Writes a 2-D landscape as a VTK PolyData XML file (.vtp, ASCII) for ParaView.

  Point (i, j) has index i * len(ys) + j and coordinates (xs[i], ys[j], h[i, j]) with
  h = `vtp_values(z, log=log, zmax=zmax)` (clip at `zmax`, then log(z + 0.1) when `log`, as the
  reference h52vtp of Li et al. 2018); the heights are also stored as point data `name`. Every
  grid cell is one quad polygon (points (i, j), (i+1, j), (i+1, j+1), (i, j+1)).

  Args:
    path: output file; ".vtp" is appended when missing.
    xs, ys, z: the grid, z[i, j] = f(xs[i], ys[j]).
    log, zmax: see above.
    name: name of the scalar point array.

  Returns:
    [path of the written .vtp file].
  """
  xs, ys, z = check_surface(xs, ys, z)
  h = vtp_values(z, log=log, zmax=zmax)
  n, m = z.shape
  xx, yy = np.meshgrid(xs, ys, indexing="ij")
  points = np.stack([xx.ravel(), yy.ravel(), h.ravel()], axis=1)
  ii, jj = np.meshgrid(np.arange(n - 1), np.arange(m - 1), indexing="ij")
  base = (ii * m + jj).ravel()
  quads = np.stack([base, base + m, base + m + 1, base + 1], axis=1)
  offsets = 4 * np.arange(1, quads.shape[0] + 1)

  def array_text(a, fmt, per_line):
    flat = a.ravel()
    starts = range(0, flat.size, per_line)
    rows = [" ".join(fmt % v for v in flat[k : k + per_line]) for k in starts]
    return "\n" + "\n".join(rows) + "\n"

  root = ET.Element(
    "VTKFile", type="PolyData", version="1.0", byte_order="LittleEndian", header_type="UInt64"
  )
  poly = ET.SubElement(root, "PolyData")
  piece = ET.SubElement(
    poly, "Piece", NumberOfPoints=str(n * m), NumberOfVerts="0", NumberOfLines="0",
    NumberOfStrips="0", NumberOfPolys=str(quads.shape[0]),
  )
  pdata = ET.SubElement(piece, "PointData", Scalars=name)
  arr = ET.SubElement(
    pdata, "DataArray", type="Float64", Name=name, NumberOfComponents="1", format="ascii",
    RangeMin=repr(float(h.min())), RangeMax=repr(float(h.max())),
  )
  arr.text = array_text(h, "%.9g", 6)
  pts = ET.SubElement(piece, "Points")
  arr = ET.SubElement(
    pts, "DataArray", type="Float64", Name="Points", NumberOfComponents="3", format="ascii"
  )
  arr.text = array_text(points, "%.9g", 3)
  polys = ET.SubElement(piece, "Polys")
  arr = ET.SubElement(polys, "DataArray", type="Int64", Name="connectivity", format="ascii")
  arr.text = array_text(quads, "%d", 4)
  arr = ET.SubElement(polys, "DataArray", type="Int64", Name="offsets", format="ascii")
  arr.text = array_text(offsets, "%d", 8)

  path = os.fspath(path)
  if not path.lower().endswith(".vtp"):
    path += ".vtp"
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  ET.indent(root, space="  ")
  fileio.atomic_write_bytes(path, ET.tostring(root, encoding="utf-8", xml_declaration=True))
  return [path]
