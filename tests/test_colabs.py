"""colabs/: every notebook runs headless on the tiny model, and prints what it promises."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
COLABS = ROOT / "colabs"
NOTEBOOKS = sorted(COLABS.glob("*.ipynb"))


def text_of(nb) -> str:
  """Everything the code cells printed (stream and text/plain outputs)."""
  out = []
  for cell in nb.cells:
    for o in cell.get("outputs", []):
      if o.output_type == "stream":
        out.append(o.text)
      elif "data" in o and "text/plain" in o.data:
        out.append(o.data["text/plain"])
  return "".join(out)


def images_of(nb) -> int:
  return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def number(pattern: str, text: str) -> float:
  m = re.search(pattern, text)
  assert m, f"{pattern!r} not in the notebook's output:\n{text[-3000:]}"
  return float(m.group(1))


def test_the_three_notebooks_exist_and_share_the_first_cell_contract():
  assert [p.name for p in NOTEBOOKS] == ["cache_walkthrough.ipynb", "quickstart.ipynb",
                                         "training_tiny.ipynb"]
  for path in NOTEBOOKS:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    first = code[0]
    assert 'MODEL = os.environ.get("PSYNTH_COLAB_MODEL", "smollm2-135m-instruct")' in first
    assert re.search(r"^# %pip install .*requirements\.txt", first, re.M), path.name
    assert any(re.search(r"^import psynth$", c, re.M) for c in code), path.name
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        f"{path.name} is stored with outputs; clear them"


def check_quickstart(text: str) -> None:
  for method in ("text", "psynth"):
    assert number(rf"{method}\s+TTFT\s+([\d.]+) ms", text) > 0
  assert number(r"TTFT ratio text / psynth: ([\d.]+)x", text) > 0
  assert len(re.findall(r"^worker \d: ", text, re.M)) == 4


def check_cache_walkthrough(text: str) -> None:
  # shared_start puts every branch at 0; sequential packs them end to end.
  shared = re.findall(r"branch \d: \d+\.\.\d+ -> (\d+)\.\.(\d+)", text.split("sequential:")[0])
  assert [int(a) for a, _ in shared] == [0, 0, 0]
  seq = re.findall(r"branch \d: \d+\.\.\d+ -> (\d+)\.\.(\d+)", text.split("sequential:")[1])
  starts, ends = [int(a) for a, _ in seq], [int(b) for _, b in seq]
  assert starts[0] == 0 and starts[1:] == [e + 1 for e in ends[:-1]]
  assert "values unchanged: True" in text
  assert number(r"keys re-rotated, max \|dk\| = ([\d.e+-]+)", text) > 1e-3
  assert number(r"round trip max \|k_back - k\| = ([\d.e+-]+)", text) < 1e-4
  # A fresh mapper is the identity.
  assert number(r"mapper changed k by at most ([\d.e+-]+)", text) == 0.0
  assert "branch 0 a_k per layer (head 0): [1.0, 1.0]" in text


def check_training_tiny(text: str) -> None:
  first = number(r"train loss: first ([\d.]+)", text)
  last = number(r"train loss: first [\d.]+, last ([\d.]+)", text)
  assert last < 0.8 * first
  assert number(r"held-out loss: naive [\d.]+, trained ([\d.]+)", text) < \
      number(r"held-out loss: naive ([\d.]+)", text)
  assert "'lora.json'" in text and "'mapper'" in text
  assert len(re.findall(r"target '.*' \| naive '.*' \| trained '.*'", text)) == 2


CHECKS = {"quickstart.ipynb": (check_quickstart, 0),
          "cache_walkthrough.ipynb": (check_cache_walkthrough, 1),
          "training_tiny.ipynb": (check_training_tiny, 1)}  # (check, plots it must draw)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_on_the_tiny_model(path, monkeypatch):
  # The kernel inherits this environment: the tiny model, and one CPU device (not the 8
  # simulated ones conftest sets for the mesh tests).
  monkeypatch.setenv("PSYNTH_COLAB_MODEL", "tiny-random")
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(COLABS)}}).execute()  # raises on a cell error
  text = text_of(nb)
  assert "MODEL = tiny-random" in text
  check, plots = CHECKS[path.name]
  check(text)
  assert images_of(nb) == plots
