r"""Regenerates the README gallery (small PNGs in docs/figures/) from a quickstart run directory.

  python experiments/quickstart.py --workdir=runs/quickstart      # a few minutes on a CPU
  python scripts/make_gallery.py --run_dir=runs/quickstart        # -> docs/figures/tour_*.png

Each figure of the tour is downsized to at most --width pixels and stored with an adaptive
256-colour palette (Pillow, which matplotlib already requires), so that each file stays under
--max_kb (150 KB) and the whole gallery well under 3 MB. The same function shrinks any other PNG
(``--extra=path:name``, e.g. the figures of docs/reproductions.md). Missing figures are reported
and skipped; the script fails only when none is found.
"""

import argparse
import io
import os
import sys

from PIL import Image

# (file written by experiments/quickstart.py, gallery name)
TOUR = (
  ("line_1d.png", "tour_line_1d.png"),
  ("interpolation.png", "tour_interpolation.png"),
  ("surface_2dcontour.png", "tour_surface_contour.png"),
  ("surface_3dsurface.png", "tour_surface_3d.png"),
  ("curve_metrics.png", "tour_curve_metrics.png"),
  ("curve_plane.png", "tour_curve_plane.png"),
  ("alignment.png", "tour_alignment.png"),
  ("spectrum.png", "tour_spectrum.png"),
  ("fge.png", "tour_fge.png"),
  ("trajectory.png", "tour_trajectory.png"),
)


def shrink(src: str, dst: str, *, width: int = 640, max_kb: int = 150) -> int:
  """Writes `src` to `dst` at most `width` pixels wide, palette PNG; returns the size in bytes.

  The width is reduced further (by 15 % steps) until the file is under `max_kb` kilobytes.
  """
  with Image.open(src) as im:
    im = im.convert("RGBA")
    background = Image.new("RGBA", im.size, (255, 255, 255, 255))
    im = Image.alpha_composite(background, im).convert("RGB")
  w = min(width, im.width)
  while True:
    h = max(1, round(im.height * w / im.width))
    small = im.resize((w, h), Image.LANCZOS) if w != im.width else im
    buf = io.BytesIO()
    small.quantize(colors=256, method=Image.MEDIANCUT).save(buf, format="PNG", optimize=True)
    if buf.tell() <= max_kb * 1024 or w < 200:
      break
    w = int(w * 0.85)
  os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
  with open(dst, "wb") as f:
    f.write(buf.getvalue())
  return buf.tell()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run_dir", default="runs/quickstart", help="quickstart --workdir")
  parser.add_argument("--out", default=os.path.join("docs", "figures"))
  parser.add_argument("--width", type=int, default=640)
  parser.add_argument("--max_kb", type=int, default=150)
  parser.add_argument("--extra", action="append", default=[],
                      help="SRC:NAME, another PNG to shrink into --out as NAME (repeatable)")
  args = parser.parse_args(argv)

  jobs = [(os.path.join(args.run_dir, src), name) for src, name in TOUR]
  for spec in args.extra:
    src, sep, name = spec.rpartition(":")
    if not sep:
      parser.error(f"--extra expects SRC:NAME, got {spec!r}")
    jobs.append((src, name))
  written = 0
  for src, name in jobs:
    if not os.path.exists(src):
      print(f"missing {src}: skipped (run experiments/quickstart.py --workdir={args.run_dir})")
      continue
    size = shrink(src, os.path.join(args.out, name), width=args.width, max_kb=args.max_kb)
    written += 1
    print(f"{name}: {size / 1024:.0f} KB")
  if not written:
    sys.exit(f"No figure found under {args.run_dir}; run experiments/quickstart.py first.")
  total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out)
              if f.endswith(".png"))
  print(f"{written} figures written; {args.out} holds {total / 1024:.0f} KB of PNGs")


if __name__ == "__main__":
  main()
