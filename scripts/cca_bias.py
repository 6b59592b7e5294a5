#!/usr/bin/env python
"""The CCA an analysis would read between two independent random representations.

CCA finds the best-matching directions in-sample, so with few datapoints per feature even
unrelated representations look similar. This prints that floor for 64 features (conv4's
channels) at the datapoint counts of the Omniglot analysis: 95 queries per task averaged
over space (`--conv mean`), and times 4 and 16 spatial positions (conv4, conv3).

Usage: .venv/bin/python scripts/cca_bias.py [FEATURES]
"""

import sys

import numpy as np

from metarl.analysis.report import CCA_THRESHOLD
from metarl.analysis.similarity import linear_cka, mean_cca

features = int(sys.argv[1]) if len(sys.argv) > 1 else 64
rng = np.random.default_rng(0)
print(f"independent Gaussian representations, {features} features, mean of 8 draws")
print(f"{'datapoints':>10}  {'CCA':>6}  {'CCAall':>6}  {'CKA':>6}")
for n in (95, 380, 1520):
    draws = [(rng.standard_normal((n, features)), rng.standard_normal((n, features))) for _ in range(8)]
    cca = np.mean([mean_cca(x, y, threshold=CCA_THRESHOLD) for x, y in draws])
    cca_all = np.mean([mean_cca(x, y) for x, y in draws])
    cka = np.mean([linear_cka(x, y) for x, y in draws])
    print(f"{n:>10}  {cca:6.3f}  {cca_all:6.3f}  {cka:6.3f}")
