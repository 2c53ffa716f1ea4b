"""Loads an HTML page in headless Chromium and reports what rendered (a helper of the tests).

`render(path)` copies the page, adds a script that records uncaught errors and `console.error`
calls from the start and, once the page has loaded and its scripts ran, writes a JSON summary of
every plotly plot into the DOM; Chromium's `--dump-dom` prints that DOM. WebGL (plotly's 3-D
surfaces) runs on SwiftShader, Chromium's CPU renderer. No browser is downloaded: Chromium is the
system's (Debian: `apt-get install chromium`; CI's .ci/run installs it). `need_chromium()` skips a
test when it is missing, except under CI (the CI variable set), where it fails.
"""

import html
import json
import os
import re
import shutil
import subprocess

import pytest

__all__ = ["chromium", "need_chromium", "render", "screenshot"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FLAGS = ("--headless", "--disable-gpu", "--no-sandbox", "--use-angle=swiftshader",
          "--enable-unsafe-swiftshader", "--no-first-run", "--disable-extensions",
          "--allow-file-access-from-files")

_HEAD = """<script>window.__ljErrors = [];
window.addEventListener("error", function (e) { window.__ljErrors.push("error: " + e.message); });
window.addEventListener("unhandledrejection", function (e) {
  window.__ljErrors.push("rejection: " + e.reason); });
(function () { var f = console.error; console.error = function () {
  window.__ljErrors.push("console.error: " + Array.prototype.join.call(arguments, " "));
  return f.apply(console, arguments); }; })();</script>"""

_TAIL = """<script>window.addEventListener("load", function () { setTimeout(function () {
  var plots = [];
  document.querySelectorAll(".plotly-graph-div").forEach(function (d) {
    plots.push({id: d.id, laidOut: !!d._fullLayout, traces: (d.data || []).length,
                svg: !!d.querySelector("svg.main-svg"),
                gl: d.querySelectorAll(".gl-container canvas").length,
                scene: (d._fullLayout && d._fullLayout.scene) ? 1 : 0,
                text: d.innerText.slice(0, 200)}); });
  var pre = document.createElement("pre"); pre.id = "lj-result";
  pre.textContent = JSON.stringify({plots: plots, errors: window.__ljErrors,
                                    plotly: typeof Plotly});
  document.body.appendChild(pre); }, 1500); });</script>"""


def chromium() -> str | None:
  """The path of a Chromium (or Chrome) executable: $LANDSCAPE_JAX_CHROMIUM or on PATH."""
  env = os.environ.get("LANDSCAPE_JAX_CHROMIUM")
  if env:
    return env
  for name in _CANDIDATES:
    found = shutil.which(name)
    if found:
      return found
  return None


def need_chromium() -> str:
  """Chromium's path; skips the test without one, but fails when the CI variable is set."""
  exe = chromium()
  if exe is None:
    msg = ("no Chromium found (looked for $LANDSCAPE_JAX_CHROMIUM and " + ", ".join(_CANDIDATES)
           + " on PATH); install it (Debian: apt-get install chromium) to test the report in a "
           "browser")
    if os.environ.get("CI"):
      pytest.fail(msg + ". CI is set, so this fails instead of skipping.", pytrace=False)
    pytest.skip(msg)
  return exe


def _instrumented(path, out_dir) -> str:
  with open(path, encoding="utf-8") as f:
    page = f.read()
  assert "<head>" in page and "</body>" in page, f"{path} is not a full HTML page"
  page = page.replace("<head>", "<head>\n" + _HEAD, 1)
  before, end, after = page.rpartition("</body>")
  page = before + _TAIL + end + after
  copy = os.path.join(out_dir, "instrumented_" + os.path.basename(path))
  with open(copy, "w", encoding="utf-8") as f:
    f.write(page)
  return copy


def render(path, tmp_dir, *, timeout: float = 120.0, budget_ms: int = 30000) -> dict:
  """{"plots": [{id, laidOut, traces, svg, gl, scene, text}], "errors": [...], "plotly": type,
  "stderr": Chromium's log} for the page at `path`, after its scripts ran (virtual time)."""
  exe = need_chromium()
  copy = _instrumented(os.fspath(path), os.fspath(tmp_dir))
  proc = subprocess.run(
    [exe, *_FLAGS, f"--user-data-dir={os.path.join(tmp_dir, 'chromium-profile')}",
     f"--virtual-time-budget={budget_ms}", "--window-size=1280,2000", "--enable-logging=stderr",
     "--v=0", "--dump-dom", "file://" + os.path.abspath(copy)],
    capture_output=True, text=True, timeout=timeout)
  match = re.search(r'<pre id="lj-result">(.*?)</pre>', proc.stdout, re.S)
  assert match, (f"Chromium printed no result (exit {proc.returncode}); its log ends with:\n"
                 + proc.stderr[-3000:])
  out = json.loads(html.unescape(match.group(1)))
  out["stderr"] = proc.stderr
  return out


def screenshot(path, png, tmp_dir, *, width: int = 1280, height: int = 4000,
               timeout: float = 120.0) -> str:
  """Writes a PNG screenshot of the page at `path` to `png` (for a person to look at)."""
  exe = need_chromium()
  subprocess.run(
    [exe, *_FLAGS, f"--user-data-dir={os.path.join(tmp_dir, 'chromium-profile')}",
     "--virtual-time-budget=30000", f"--window-size={width},{height}", "--hide-scrollbars",
     f"--screenshot={os.path.abspath(png)}", "file://" + os.path.abspath(path)],
    capture_output=True, text=True, timeout=timeout, check=True)
  return png
