"""Forward+backward time and peak extra memory of every registered loss against its MONAI / PyTorch / peer
equivalent, on the same tensors in one run: the speed part of ``python -m monai_losses_ext.benchmark``
(monai_losses_ext/benchmark/speed.py) with the settings of the published table.

    python benchmarks/bench_losses.py                                  # CPU, B=2, C=4, 96^3 -> benchmarks/results/
    python benchmarks/bench_losses.py --device cuda --size 128 --amp   # GPU table

Any option of ``python -m monai_losses_ext.benchmark speed`` can be given; these are only the defaults.
"""

import sys
from pathlib import Path

from monai_losses_ext.benchmark.__main__ import main

if __name__ == "__main__":
    defaults = ["--size", "96", "--repeats", "11", "--out", str(Path(__file__).resolve().parent / "results")]
    raise SystemExit(main(["speed", *defaults, *sys.argv[1:]]))
