"""Loaders for the real data sets shipped with losskit (see `data/DATA.md` for sources/licences).

Nothing here touches the network.
"""

from importlib import resources

import numpy as np

_DATA = resources.files("losskit.recipes") / "data"


def load_airfoil():
    """NASA airfoil self-noise (Brooks, Pope & Marcolini 1989; UCI id 291): 1503 rows.

    Returns `(X, y)`: X (1503, 5) float64 = frequency [Hz], angle of attack [deg], chord length
    [m], free-stream velocity [m/s], suction-side displacement thickness [m]; y (1503,) = scaled
    sound pressure level [dB].
    """
    with (_DATA / "airfoil_self_noise.dat").open("rb") as f:
        table = np.loadtxt(f, delimiter="\t")
    return table[:, :5], table[:, 5]


def load_german_credit():
    """Statlog German credit, numeric version (Hofmann 1994; UCI id 144): 1000 rows.

    Returns `(X, y)`: X (1000, 24) float64 attributes; y (1000,) int, 1 = good credit (class 1 in
    the file), 0 = bad credit (class 2).
    """
    with (_DATA / "german.data-numeric").open("rb") as f:
        table = np.loadtxt(f)
    return table[:, :24], (table[:, 24] == 1).astype("int64")
