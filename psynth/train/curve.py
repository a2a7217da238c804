"""A training run's curves from its TensorBoard events, as a PNG (for results pages).

    python -m psynth.train.curve runs/smollm2 results/training_curve.png
"""

from __future__ import annotations

import sys
from pathlib import Path

from psynth.train.logs import read_scalars


def plot(workdir: str | Path, out_png: str | Path) -> Path:
  """Train loss per step, held-out loss of the trained cache path, the naive cache path and
  text synthesis (base model, branch texts in the prompt) on the same targets."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  tb = Path(workdir) / "tensorboard"
  train = read_scalars(tb, "train/loss")
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.plot([s for s, _ in train], [v for _, v in train], lw=0.8, alpha=0.6, label="train loss")
  try:
    val = read_scalars(tb, "eval/loss")
    ax.plot([s for s, _ in val], [v for _, v in val], "o-", label="held-out loss (psynth)")
    naive = read_scalars(tb, "eval/naive_loss")[-1][1]
    ax.axhline(naive, color="gray", ls="--", label=f"held-out loss, naive cache path ({naive:.3f})")
    text = read_scalars(tb, "eval/text_loss")[-1][1]
    ax.axhline(text, color="green", ls=":", label=f"held-out loss, text synthesis ({text:.3f})")
  except KeyError:
    pass
  ax.set_xlabel("step")
  ax.set_ylabel("cross-entropy per target token")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  Path(out_png).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out_png, dpi=120)
  return Path(out_png)


if __name__ == "__main__":
  if len(sys.argv) != 3:
    sys.exit("usage: python -m psynth.train.curve WORKDIR OUT.png")
  print(plot(sys.argv[1], sys.argv[2]))
