"""experiments/recall_by_region.py: recall counted per region and range on hand-made scans."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from experiments import recall_by_region as rbr
from xkd_core.classes import CLASS_NAMES


def test_recall_by_region_and_range() -> None:
    road, parking = CLASS_NAMES.index("road"), CLASS_NAMES.index("parking")
    truth = np.array([parking, parking, parking, parking, road, road])
    dist = np.array([3.0, 4.0, 25.0, 3.0, 3.0, 60.0])
    frustum = np.array([True, True, True, False, False, False])
    table = rbr.RecallTable(["a", "b"], ranges=(0.0, 10.0, 50.0, 1000.0), classes=("road", "parking"))
    table.add("a", truth, np.array([parking, road, road, parking, road, parking]), dist, frustum)
    table.add("b", truth, np.array([parking, parking, parking, road, road, road]), dist, frustum)
    rows = {(r["region"], r["range_m"][0], r["class"]): r for r in table.to_json()["rows"]}
    assert rows[("frustum", 0.0, "parking")]["points"] == 2
    assert rows[("frustum", 0.0, "parking")]["recall"] == {"a": 0.5, "b": 1.0}
    assert rows[("frustum", 10.0, "parking")]["recall"] == {"a": 0.0, "b": 1.0}
    assert rows[("outside", 0.0, "parking")]["recall"] == {"a": 1.0, "b": 0.0}
    assert rows[("outside", 0.0, "road")]["recall"] == {"a": 1.0, "b": 1.0}
    assert rows[("outside", 50.0, "road")]["recall"] == {"a": 0.0, "b": 1.0}
    assert len(rows) == 5  # empty cells are left out
    md = rbr.markdown(table.to_json(), min_points=2)
    assert "| parking | frustum | 0-10 | 2 | 0.50 | 1.00 |" in md and "| road |" not in md


def test_model_argument() -> None:
    assert rbr.parse_model("t=a/b.pt:fuse") == ("t", Path("a/b.pt"), True)
    assert rbr.parse_model("s=a/b.pt") == ("s", Path("a/b.pt"), False)
    with pytest.raises(argparse.ArgumentTypeError):
        rbr.parse_model("a/b.pt")
