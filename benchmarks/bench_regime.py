"""Loss speed in the bundles' own regime, ours against MONAI's on the same tensors in one run: the MONAI-equivalent
losses on sparse lesion labels (C = 2 and 4, 64^3 and 96^3, B = 2) and the loss's share of the lesion bundle's
training step (``python -m monai_losses_ext.benchmark regime``, monai_losses_ext/benchmark/regime.py).

    python benchmarks/bench_regime.py --threads 2                       # CPU -> benchmarks/results/
    python benchmarks/bench_regime.py --device cuda --sizes 64 96 128   # GPU

Any option of ``python -m monai_losses_ext.benchmark regime`` can be given; these are only the defaults.
"""

import sys
from pathlib import Path

from monai_losses_ext.benchmark.__main__ import main

if __name__ == "__main__":
    defaults = ["--repeats", "7", "--out", str(Path(__file__).resolve().parent / "results")]
    raise SystemExit(main(["regime", *defaults, *sys.argv[1:]]))
