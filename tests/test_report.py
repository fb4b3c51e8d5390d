"""JSON and HTML reports."""

import json
import math

import numpy as np

from losskit.recipes import common, report


def _result(name, wall=1.0):
    return {
        "recipe": name,
        "summary": f"{name} summary",
        "seeds": [0, 1],
        "metrics": {
            "a": {"acc": common.summarize([0.5, 0.7]), "auc": common.summarize([0.8, None])},
            "b": {"acc": common.summarize([0.6])},
        },
        "plots": ["curves.png"],
        "notes": ["note"],
        "checks": {"match": {"ok": False, "max_abs_diff": 0.5, "description": "d"}},
        "wall_time_s": wall,
        "versions": {"keras": "3", "keras_backend": "tensorflow"},
    }


def test_to_jsonable_strict_json():
    value = {"a": np.float32(1.5), "b": np.arange(3), "c": [math.nan, math.inf, np.int64(2)],
             "d": (np.bool_(True),)}
    out = report.to_jsonable(value)
    assert out == {"a": 1.5, "b": [0, 1, 2], "c": [None, None, 2], "d": [True]}
    json.dumps(out, allow_nan=False)


def test_summaries_are_mean_std_values():
    s = common.summarize([1.0, 3.0, float("nan")])
    assert s == {"mean": 2.0, "std": 1.0, "values": [1.0, 3.0, None]}
    runs = common.summarize_runs({"arm": [{"x": 1.0}, {"x": 2.0}]})
    assert runs["arm"]["x"]["mean"] == 1.5
    h = common.summarize_histories([{"loss": [3.0, 2.0]}, {"loss": [5.0, 4.0, 1.0]}])
    assert h["loss"]["mean"] == [4.0, 3.0]  # cut to the shortest run
    assert h["loss"]["values"] == [[3.0, 2.0], [5.0, 4.0, 1.0]]


def test_index_is_self_contained(tmp_path):
    for name, wall in (("vae-annealing", 2.0), ("airfoil-huber", 1.0), ("zzz-custom", 3.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps(_result(name, wall)))
    path = report.write_index(tmp_path)
    page = path.read_text()
    assert path == tmp_path / "index.html"
    # recipes in `losskit list` order, unknown ones last
    assert page.index("id='airfoil-huber'") < page.index("id='vae-annealing'")
    assert page.index("id='vae-annealing'") < page.index("id='zzz-custom'")
    assert "src='airfoil-huber/curves.png'" in page
    assert "0.6 ± 0.1 (n=2)" in page and "0.8 ± 0 (n=2)" in page  # NaN seed left out of mean
    assert "FAILED" in page
    assert "http://" not in page and "https://" not in page  # no network


def test_index_without_results(tmp_path):
    page = report.write_index(tmp_path / "empty").read_text()
    assert "losskit run all" in page


def test_progress_bar_counts_runs():
    import io

    stream = io.StringIO()
    bar = common.Progress(2, "demo", width=4, stream=stream)
    bar.start("seed 0")
    bar.done("ok")
    bar.start("seed 1")
    bar.done()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[1].startswith("[demo] |##--| 1/2 runs") and lines[1].endswith("ok")
    assert lines[3].startswith("[demo] |####| 2/2 runs")
