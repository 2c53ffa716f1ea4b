"""A single-file HTML report of an experiment: sections of text, figures, a table of numbers and
the configuration that produced them.

The page has its styles inline and loads nothing from a network. Static figures are referenced by
paths relative to the report (so the run folder can be moved or zipped as a whole), or embedded as
base64 data with `embed_images=True` for a page that stands entirely alone. Interactive figures
(plotly Figures, or the ".plotly.json" files `plotting.interactive.save_interactive` writes) are
always embedded, after one inline copy of plotly.js (about 4.8 MB), so the page works offline;
a section that has them shows its static figures (PNG, PDF for papers) folded below them. All
user text is HTML-escaped.

File names are read as names, never as markup or links: every ``src`` / ``href`` is a
percent-encoded relative path (so a name like ``javascript:alert(1)`` or one with quotes is a
file name, not a script or a broken attribute); a relative figure path that leaves the report's
folder (``../``) is refused; an absolute path is the caller's explicit choice and is linked
relative to the report. ".plotly.json" files are read as JSON data only (a regular file of at
most `MAX_PLOTLY_JSON_BYTES`, a JSON object with a "data" list), never executed or unpickled;
plotly escapes their strings inside the page's script.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import numbers
import os
import re
import stat
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from landscape_jax.core import fileio

__all__ = [
  "format_value",
  "read_plotly_json",
  "write_report",
]

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 62em; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #eee; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; }
figure img { max-width: 100%; width: 30em; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; max-width: 36em; }
figure.interactive { display: block; margin: 1em 0; }
figure.interactive figcaption { max-width: none; }
.lj-plot { width: 100%; min-height: 380px; }
details { margin: .5em 0 1em; }
summary { cursor: pointer; color: #555; }
table { border-collapse: collapse; margin: .8em 0; }
td, th { border: 1px solid #ddd; padding: .25em .8em; text-align: left; }
td.num { text-align: right; font-family: monospace; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: .85em; }
nav ul { columns: 2; }
footer { margin-top: 3em; font-size: .8em; color: #888; }
"""


def format_value(value: Any) -> str:
  """A table cell: floats with 4 significant digits (scientific when tiny/huge), others as str."""
  if isinstance(value, bool) or value is None:
    return str(value)
  if isinstance(value, numbers.Integral):
    return str(int(value))
  if isinstance(value, numbers.Real):
    v = float(value)
    if math.isnan(v) or math.isinf(v):
      return str(v)
    return f"{v:.4g}"
  if hasattr(value, "shape") and getattr(value, "shape", None) == ():
    return format_value(value.item())
  if isinstance(value, list | tuple) or hasattr(value, "tolist"):
    items = value.tolist() if hasattr(value, "tolist") else list(value)
    if isinstance(items, list):
      return "[" + ", ".join(format_value(x) for x in items) + "]"
    return format_value(items)
  return str(value)


def _config_text(config: Any) -> str:
  """The configuration as YAML-like text (nested dicts indented, lists of scalars on one line)."""
  if config is None:
    return ""
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict
    config = config.to_dict()
  if not isinstance(config, Mapping):
    return str(config)
  return "\n".join(_config_lines(_jsonable(config), 0))


def _config_lines(d: Mapping[str, Any], depth: int) -> list[str]:
  pad = "  " * depth
  lines = []
  for k, v in d.items():
    if isinstance(v, Mapping) and v:
      lines.append(f"{pad}{k}:")
      lines.extend(_config_lines(v, depth + 1))
    elif isinstance(v, list) and any(isinstance(x, Mapping | list) for x in v):
      lines.append(f"{pad}{k}: {json.dumps(v)}")
    else:
      lines.append(f"{pad}{k}: {_scalar_text(v)}")
  return lines


def _scalar_text(v: Any) -> str:
  if isinstance(v, list):
    return "[" + ", ".join(_scalar_text(x) for x in v) + "]"
  if isinstance(v, Mapping):
    return "{}"
  if v is None or isinstance(v, bool):
    return str(v)
  if isinstance(v, str):
    return v if v and v.strip() == v else repr(v)
  return repr(v) if isinstance(v, float) else str(v)


def _jsonable(x: Any) -> Any:
  """Plain Python values: dicts, lists, str, int, float, bool, None (arrays become lists)."""
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [_jsonable(v) for v in x]
  if isinstance(x, bool | int | float | str) or x is None:
    return x
  if hasattr(x, "tolist"):
    return _jsonable(x.tolist())
  return str(x)


def _paragraphs(text: str) -> str:
  parts = [p.strip() for p in str(text).split("\n\n")]
  return "\n".join(
    "<p>" + html.escape(p, quote=False).replace("\n", "<br>\n") + "</p>" for p in parts if p
  )


MAX_PLOTLY_JSON_BYTES = 64 * 2**20


def _url(rel: str) -> str:
  """A relative path as a URL path: percent-encoded, so no scheme, query or fragment."""
  return urllib.parse.quote(rel.replace(os.sep, "/"), safe="/")


def _figure_path(fig: str, out_dir: str, section: Any) -> str:
  """The full path of a figure; a relative path must stay inside the report's folder."""
  if os.path.isabs(fig):
    return fig
  full = os.path.join(out_dir, fig)
  inside = os.path.normpath(full)
  if os.path.commonpath([inside, os.path.normpath(out_dir)]) != os.path.normpath(out_dir):
    raise ValueError(f"Figure {fig!r} of section {section!r} leaves the report's folder "
                     f"({out_dir!r}); give a path inside it (or an absolute path if you mean a "
                     "file elsewhere).")
  return full


def _figure_src(fig: str, out_dir: str, embed: bool) -> str:
  """The src of an <img>: a path relative to the report, or base64 data when `embed`."""
  full = fig if os.path.isabs(fig) else os.path.join(out_dir, fig)
  if embed:
    if not os.path.exists(full):
      raise FileNotFoundError(
        f"Figure {fig!r} not found (looked for {full!r}); give figure paths relative to the"
        " report's folder, or absolute paths."
      )
    with open(full, "rb") as f:
      data = base64.b64encode(f.read()).decode("ascii")
    ext = os.path.splitext(full)[1].lower().lstrip(".")
    mime = {"svg": "image/svg+xml", "jpg": "image/jpeg"}.get(ext, f"image/{ext or 'png'}")
    return f"data:{mime};base64,{data}"
  rel = os.path.relpath(full, out_dir) if os.path.isabs(fig) else fig
  return _url(rel)


_PLOTLY_SUFFIX = ".plotly.json"
_PLOT_CONFIG = {"responsive": True, "displaylogo": False, "scrollZoom": False}


def _is_plotly(x: Any) -> bool:
  return hasattr(x, "to_plotly_json") and hasattr(x, "data")


def _relative(full: str, out_dir: str) -> str:
  return _url(os.path.relpath(full, out_dir))


def read_plotly_json(full: str, fig: str) -> dict:
  """A ".plotly.json" file as data: a regular file, size-bounded, a JSON object with "data".

  Args:
    full: the file's path.
    fig: how to name it in errors (the path the caller gave).

  Raises:
    ValueError: not a regular file, over `MAX_PLOTLY_JSON_BYTES`, not JSON, or not a figure."""
  st = os.stat(full)
  if not stat.S_ISREG(st.st_mode):
    raise ValueError(f"Interactive figure {fig!r} ({full!r}) is not a regular file.")
  if st.st_size > MAX_PLOTLY_JSON_BYTES:
    raise ValueError(f"Interactive figure {fig!r} is {st.st_size} bytes, over the "
                     f"{MAX_PLOTLY_JSON_BYTES}-byte limit of report.MAX_PLOTLY_JSON_BYTES; save "
                     "a smaller figure (fewer grid points) or raise the limit.")
  with open(full, encoding="utf-8") as f:
    try:
      out = json.load(f)
    except ValueError as e:
      raise ValueError(f"Interactive figure {fig!r} is not valid JSON ({e}); write it with "
                       "plotting.save_interactive.") from e
  if not isinstance(out, dict) or not isinstance(out.get("data"), list):
    raise ValueError(f"Interactive figure {fig!r} is not a plotly figure (a JSON object with a "
                     "'data' list); write it with plotting.save_interactive.")
  return out


def _figure_entry(entry: Any, where: str) -> tuple[Any, str]:
  """(figure, caption) from a path, a plotly Figure, {"path"/"figure", "caption"} or a pair."""
  if isinstance(entry, Mapping):
    unknown = set(entry) - {"path", "figure", "caption"}
    fig = entry.get("path", entry.get("figure"))
    if unknown or fig is None:
      raise ValueError(f"{where} must have a 'path' (or 'figure') and optionally a 'caption', "
                       f"got keys {sorted(entry)}.")
    return (fig if _is_plotly(fig) else os.fspath(fig)), str(entry.get("caption") or "")
  if isinstance(entry, list | tuple):
    if len(entry) != 2:
      raise ValueError(f"{where} must be a path or a (path, caption) pair, got {entry!r:.80}.")
    fig, caption = entry
    return (fig if _is_plotly(fig) else os.fspath(fig)), str(caption or "")
  return (entry if _is_plotly(entry) else os.fspath(entry)), ""


def _plotly_script() -> str:
  """plotly.js, inline, once per page (the page must work offline)."""
  import plotly.offline  # here: only pages with interactive figures load plotly

  return f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>'


def _interactive_html(fig: Any, caption: str, out_dir: str, div_id: str, check: bool,
                      section: str) -> str:
  """A <figure> with a plotly div and the script that draws it (no plotly.js: see above)."""
  import plotly.io as pio  # here, as in _plotly_script

  if not _is_plotly(fig):
    full = _figure_path(fig, out_dir, section)
    if not os.path.exists(full):
      if check:
        raise FileNotFoundError(
          f"Interactive figure {fig!r} of section {section!r} not found at {full!r}; write it "
          "with plotting.save_interactive, relative to the report's folder (or absolute).")
      return ""
    fig = read_plotly_json(full, fig)
  div = pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=div_id,
                    config=_PLOT_CONFIG, validate=False, default_width="100%")
  div = re.sub(r'class="plotly-graph-div"', 'class="plotly-graph-div lj-plot"', div, count=1)
  text = f"<figcaption>{html.escape(caption, quote=False)}</figcaption>" if caption else ""
  return f'<figure class="interactive">{div}{text}</figure>'


def _table_html(table: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> str:
  rows = table.items() if isinstance(table, Mapping) else table
  out = ["<table>", "<tr><th>quantity</th><th>value</th></tr>"]
  for name, value in rows:
    out.append(
      f"<tr><td>{html.escape(str(name))}</td>"
      f"<td class=\"num\">{html.escape(format_value(value))}</td></tr>"
    )
  out.append("</table>")
  return "\n".join(out)


def write_report(
  path_html,
  *,
  title: str,
  sections: Sequence[Mapping[str, Any]],
  config: Any = None,
  embed_images: bool = False,
  check_figures: bool = True,
) -> str:
  """Writes a self-contained HTML report and returns its path.

  Args:
    path_html: output file (e.g. "runs/quickstart/report.html"); its folder is created.
    title: page title.
    sections: a list of dicts with keys
      * "title" (str, required),
      * "text" (str, optional; blank lines separate paragraphs),
      * "figures" (list, optional): each an image path (relative to the report's folder, or
        absolute; a relative path that leaves the folder is refused; a PDF next to a PNG of the
        same name gets a link), an interactive figure (a
        plotly Figure or a ".plotly.json" file from `plotting.save_interactive`, embedded), or
        either as {"path": ..., "caption": "a sentence"} or a (path, caption) pair; without a
        caption an image is captioned with its file name. Static figures of a section that has
        interactive ones are folded below them.
      * "table" ({name: value} or [(name, value)], optional; numbers with 4 significant digits).
    config: the configuration (dict, `ml_collections.ConfigDict` or anything printable), shown in
      a <pre> block at the end.
    embed_images: embed the figures as base64 data instead of referencing them.
    check_figures: raise if a referenced figure does not exist (catches wrong relative paths).

  Returns:
    The path of the written report.
  """
  path_html = os.fspath(path_html)
  out_dir = os.path.dirname(os.path.abspath(path_html))
  os.makedirs(out_dir, exist_ok=True)
  if isinstance(sections, Mapping):
    raise TypeError("`sections` must be a list of dicts, each with a 'title'.")
  body = [f"<h1>{html.escape(str(title))}</h1>"]
  toc = []
  n_plots = 0
  for k, sec in enumerate(sections):
    if not isinstance(sec, Mapping) or "title" not in sec:
      raise ValueError(f"sections[{k}] must be a dict with a 'title' key, got {sec!r:.80}.")
    unknown = set(sec) - {"title", "text", "figures", "table"}
    if unknown:
      raise ValueError(
        f"sections[{k}] has unknown keys {sorted(unknown)}; use title, text, figures, table."
      )
    anchor = f"section-{k + 1}"
    stitle = html.escape(str(sec["title"]))
    toc.append(f'<li><a href="#{anchor}">{stitle}</a></li>')
    body.append(f'<section id="{anchor}">\n<h2>{stitle}</h2>')
    if sec.get("text"):
      body.append(_paragraphs(sec["text"]))
    figures = sec.get("figures") or []
    if isinstance(figures, str | os.PathLike) or _is_plotly(figures):
      figures = [figures]
    static, interactive = [], []
    for j, entry in enumerate(figures):
      fig, caption = _figure_entry(entry, f"sections[{k}]['figures'][{j}]")
      if _is_plotly(fig) or str(fig).endswith(_PLOTLY_SUFFIX):
        interactive.append(_interactive_html(fig, caption, out_dir, f"plot-{k + 1}-{j + 1}",
                                             check_figures, sec["title"]))
        continue
      full = _figure_path(fig, out_dir, sec["title"])
      if check_figures and not os.path.exists(full):
        raise FileNotFoundError(
          f"Figure {fig!r} of section {sec['title']!r} not found at {full!r}; figure paths are"
          " relative to the report's folder (or absolute). Pass check_figures=False to skip."
        )
      src = _figure_src(fig, out_dir, embed_images)
      name = html.escape(os.path.basename(fig))
      text = html.escape(caption, quote=False) if caption else name
      links = [f'<a href="{html.escape(_relative(full, out_dir), quote=True)}">PNG</a>']
      pdf = os.path.splitext(full)[0] + ".pdf"
      if not fig.lower().endswith(".pdf") and os.path.exists(pdf):
        links.append(f'<a href="{html.escape(_relative(pdf, out_dir), quote=True)}">PDF</a>')
      if not fig.lower().endswith(".png"):
        links = links[1:]
      alt = html.escape(caption or os.path.basename(fig), quote=True)
      static.append(
        f'<figure><img src="{html.escape(src, quote=True)}" alt="{alt}">'
        f"<figcaption>{text}{' (' + ', '.join(links) + ')' if links else ''}</figcaption>"
        "</figure>"
      )
    n_plots += len(interactive)
    body.extend(interactive)
    if static and interactive:
      body.append("<details><summary>Static figures (PNG and PDF, for papers)</summary>")
      body.extend(static)
      body.append("</details>")
    else:
      body.extend(static)
    if sec.get("table"):
      body.append(_table_html(sec["table"]))
    body.append("</section>")
  cfg = _config_text(config)
  if cfg:
    toc.append('<li><a href="#configuration">Configuration</a></li>')
    pre = html.escape(cfg, quote=False)
    body.append(f'<section id="configuration">\n<h2>Configuration</h2>\n<pre>{pre}</pre>')
    body.append("</section>")
  stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
  page = "\n".join([
    "<!DOCTYPE html>",
    '<html lang="en">',
    "<head>",
    '<meta charset="utf-8">',
    f"<title>{html.escape(str(title))}</title>",
    f"<style>{_STYLE}</style>",
    _plotly_script() if n_plots else "",
    "</head>",
    "<body>",
    body[0],
    f"<nav><ul>\n{chr(10).join(toc)}\n</ul></nav>" if len(toc) > 1 else "",
    *body[1:],
    f"<footer>Generated by landscape-jax on {stamp}.</footer>",
    "</body>",
    "</html>",
    "",
  ])
  fileio.atomic_write_text(path_html, page)
  return path_html
