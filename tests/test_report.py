"""Tests of landscape_jax.plotting.report.write_report: sections, figures, tables, config,
escaping."""

import base64
import html.parser
import os

import numpy as np
import pytest

from landscape_jax.plotting import report

PNG = base64.b64decode(
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


class _Collector(html.parser.HTMLParser):
  """Collects tags and text, and fails on unbalanced tags."""

  def __init__(self):
    super().__init__()
    self.stack, self.text, self.imgs, self.links = [], [], [], []

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "img":
      self.imgs.append(attrs)
    elif tag == "a":
      self.links.append(attrs.get("href"))
    if tag not in ("img", "meta", "br"):
      self.stack.append(tag)

  def handle_endtag(self, tag):
    assert self.stack and self.stack[-1] == tag, (self.stack, tag)
    self.stack.pop()

  def handle_data(self, data):
    self.text.append(data)


def parse(path):
  c = _Collector()
  with open(path, encoding="utf-8") as f:
    c.feed(f.read())
  c.close()
  assert not c.stack, c.stack
  return c, "".join(c.text)


@pytest.fixture
def run_dir(tmp_path):
  figs = tmp_path / "figures"
  figs.mkdir()
  (figs / "surface.png").write_bytes(PNG)
  (figs / "surface.pdf").write_bytes(b"%PDF-1.4")
  (figs / "curve.png").write_bytes(PNG)
  return tmp_path


def sections():
  return [
    {
      "title": "1-D landscape",
      "text": "Filter-normalised direction.\n\nLoss < 0.1 & accuracy > 0.9 at the centre.",
      "figures": ["figures/surface.png"],
      "table": {"train loss": 0.0123456, "test accuracy": np.float32(0.93), "points": 51},
    },
    {
      "title": "Mode <connectivity>",
      "figures": ["figures/curve.png"],
      "table": [("barrier", 0.5), ("bends", [1, 2]), ("flag", True), ("missing", float("nan"))],
    },
    {"title": "Notes only", "text": "<script>alert(1)</script>"},
  ]


def test_report_contents(run_dir):
  cfg = {"model": "mlp_small", "grid": {"xs": [-1.0, 1.0, 21]}, "lr": 0.1, "note": "a<b"}
  path = report.write_report(run_dir / "report.html", title="Quickstart <tour>",
                             sections=sections(), config=cfg)
  assert path == str(run_dir / "report.html")
  c, text = parse(path)
  raw = open(path, encoding="utf-8").read()
  for title in ("1-D landscape", "Mode <connectivity>", "Notes only", "Quickstart <tour>"):
    assert title in text
  for name, value in [("train loss", "0.01235"), ("test accuracy", "0.93"), ("points", "51"),
                      ("barrier", "0.5"), ("bends", "[1, 2]"), ("flag", "True"),
                      ("missing", "nan")]:
    assert name in text and value in text, (name, value)
  # Escaping: no raw user '<' reaches the markup.
  assert "<script>" not in raw and "&lt;script&gt;" in raw
  assert "Mode &lt;connectivity&gt;" in raw and "Loss &lt; 0.1 &amp; accuracy" in raw
  # Figures by relative path (and a PDF link where a PDF exists next to the PNG).
  assert [i["src"] for i in c.imgs] == ["figures/surface.png", "figures/curve.png"]
  assert "figures/surface.pdf" in c.links
  # The configuration in a <pre> block.
  assert "<pre>" in raw and "model: mlp_small" in raw and "note: a&lt;b" in raw
  assert "grid:\n  xs: [-1.0, 1.0, 21]" in raw and "lr: 0.1" in raw
  # Paragraphs.
  assert raw.count("<p>") >= 2


def test_report_absolute_and_embedded_figures(run_dir, tmp_path):
  sub = run_dir / "out"
  secs = [{"title": "abs", "figures": [str(run_dir / "figures" / "curve.png")]}]
  path = report.write_report(sub / "r.html", title="t", sections=secs, config=None)
  c, _ = parse(path)
  assert c.imgs[0]["src"] == "../figures/curve.png"
  path = report.write_report(sub / "e.html", title="t", sections=secs, embed_images=True)
  c, _ = parse(path)
  assert c.imgs[0]["src"].startswith("data:image/png;base64,")
  assert base64.b64decode(c.imgs[0]["src"].split(",", 1)[1]) == PNG


def test_report_config_dict_like_and_missing_figure(run_dir):
  class Cfg:  # stands in for ml_collections.ConfigDict
    def to_dict(self):
      return {"seed": 0, "shape": np.array([2, 3])}

  path = report.write_report(run_dir / "c.html", title="t", sections=[], config=Cfg())
  raw = open(path, encoding="utf-8").read()
  assert "seed: 0" in raw and "shape: [2, 3]" in raw
  with pytest.raises(FileNotFoundError, match="relative to the report"):
    report.write_report(run_dir / "m.html", title="t",
                        sections=[{"title": "x", "figures": ["nope.png"]}])
  path = report.write_report(run_dir / "m.html", title="t", check_figures=False,
                             sections=[{"title": "x", "figures": ["nope.png"]}])
  assert os.path.exists(path)


def test_report_ml_collections_config(run_dir):
  ml_collections = pytest.importorskip("ml_collections")
  cfg = ml_collections.ConfigDict({"model": "mlp", "grid": {"num": 21, "range": (-1.0, 1.0)}})
  path = report.write_report(run_dir / "mc.html", title="t", sections=[], config=cfg)
  raw = open(path, encoding="utf-8").read()
  assert "grid:\n  num: 21\n  range: [-1.0, 1.0]\nmodel: mlp" in raw


def test_report_bad_sections(run_dir):
  with pytest.raises(ValueError, match="'title'"):
    report.write_report(run_dir / "b.html", title="t", sections=[{"text": "no title"}])
  with pytest.raises(ValueError, match="unknown keys"):
    report.write_report(run_dir / "b.html", title="t", sections=[{"title": "a", "figure": "x"}])


def test_report_with_real_plot(tmp_path):
  from landscape_jax import plotting

  files = plotting.save(plotting.plot_bars(["a", "b"], [0.5, 0.7], ylabel="accuracy"),
                        tmp_path / "figs" / "bars", "png", dpi=60)
  rel = os.path.relpath(files[0], tmp_path)
  path = report.write_report(tmp_path / "report.html", title="t",
                             sections=[{"title": "bars", "figures": [rel]}], config={"a": 1})
  c, _ = parse(path)
  assert c.imgs[0]["src"] == "figs/bars.png"


def test_format_value():
  assert report.format_value(0.000012345) == "1.234e-05"
  assert report.format_value(np.int64(3)) == "3"
  assert report.format_value(np.array(2.5)) == "2.5"
  assert report.format_value(np.array([0.1, 0.25])) == "[0.1, 0.25]"
  assert report.format_value("x") == "x"


def test_report_names_are_names_not_markup_or_links(run_dir):
  # hostile file names, captions and titles, as they could come from a tampered results file
  odd = 'a "quoted" <b>name.png'
  (run_dir / "figures" / odd).write_bytes(PNG)
  secs = [{"title": '<img src=x onerror="alert(1)">',
           "figures": [(f"figures/{odd}", '"><script>alert(2)</script>'),
                       ("javascript:alert(3)", "")]}]
  path = report.write_report(run_dir / "h.html", title="t", sections=secs, check_figures=False)
  c, text = parse(path)
  raw = open(path, encoding="utf-8").read()
  assert "<script>alert" not in raw and "onerror=\"alert" not in raw
  assert '<img src=x onerror="alert(1)">' in text  # shown as text
  srcs = [i["src"] for i in c.imgs]
  assert srcs[0] == "figures/a%20%22quoted%22%20%3Cb%3Ename.png"
  assert srcs[1] == "javascript%3Aalert%283%29"  # a relative file name, not a javascript: URL
  assert all(":" not in (h or "") for h in c.links if not (h or "").startswith("#"))
  assert "figures/a%20%22quoted%22%20%3Cb%3Ename.png" in c.links


def test_report_refuses_paths_that_leave_its_folder(run_dir):
  sub = run_dir / "out"
  for bad in ("../figures/curve.png", "figs/../../figures/curve.png"):
    with pytest.raises(ValueError, match="leaves the report's folder"):
      report.write_report(sub / "r.html", title="t", sections=[{"title": "s", "figures": [bad]}])
    with pytest.raises(ValueError, match="leaves the report's folder"):
      report.write_report(sub / "r.html", title="t", check_figures=False,
                          sections=[{"title": "s", "figures": [bad + ".plotly.json"]}])
  assert not (sub / "r.html").exists()


def test_report_reads_plotly_json_as_bounded_data(run_dir, monkeypatch):
  pytest.importorskip("plotly")
  fig = {"data": [{"type": "scatter", "x": [1, 2], "y": [3, 4],
                   "name": "</script><script>alert(1)</script>"}], "layout": {}}
  (run_dir / "ok.plotly.json").write_text(__import__("json").dumps(fig))
  path = report.write_report(run_dir / "p.html", title="t",
                             sections=[{"title": "s", "figures": ["ok.plotly.json"]}])
  raw = open(path, encoding="utf-8").read()
  assert "</script><script>alert(1)" not in raw and "alert(1)" in raw  # kept, as escaped data
  (run_dir / "code.plotly.json").write_text("__import__('os').system('x')")
  with pytest.raises(ValueError, match="not valid JSON"):
    report.write_report(run_dir / "p.html", title="t",
                        sections=[{"title": "s", "figures": ["code.plotly.json"]}])
  (run_dir / "list.plotly.json").write_text("[1, 2]")
  with pytest.raises(ValueError, match="not a plotly figure"):
    report.write_report(run_dir / "p.html", title="t",
                        sections=[{"title": "s", "figures": ["list.plotly.json"]}])
  (run_dir / "dir.plotly.json").mkdir()
  with pytest.raises(ValueError, match="not a regular file"):
    report.write_report(run_dir / "p.html", title="t",
                        sections=[{"title": "s", "figures": ["dir.plotly.json"]}])
  monkeypatch.setattr(report, "MAX_PLOTLY_JSON_BYTES", 50)
  with pytest.raises(ValueError, match="over the 50-byte limit"):
    report.write_report(run_dir / "p.html", title="t",
                        sections=[{"title": "s", "figures": ["ok.plotly.json"]}])


def test_load_interactive_reads_bounded_data(tmp_path, monkeypatch):
  pytest.importorskip("plotly")
  from landscape_jax.plotting import interactive

  fig = interactive.interactive_bars(["a", "b"], [0.5, 0.7], ylabel="accuracy")
  path = interactive.save_interactive(fig, tmp_path / "bars")
  back = interactive.load_interactive(path)
  import json

  import plotly.io as pio
  as_data = lambda f: json.loads(pio.to_json(f, validate=False))
  assert as_data(back) == as_data(fig)
  (tmp_path / "bad.plotly.json").write_text('"just a string"')
  with pytest.raises(ValueError, match="not a plotly figure"):
    interactive.load_interactive(tmp_path / "bad.plotly.json")
  monkeypatch.setattr(report, "MAX_PLOTLY_JSON_BYTES", 10)
  with pytest.raises(ValueError, match="over the 10-byte limit"):
    interactive.load_interactive(path)
