"""The benchmark's bookkeeping: fair turns, each peer's fastest setting, paired ratios."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("bench", Path(__file__).resolve().parent.parent / "benchmarks" / "run.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_race_gives_every_contender_a_turn_per_round_and_rotates_who_starts():
    calls = []
    contenders = {name: (lambda name=name: calls.append(name)) for name in ("vislib", "peer", "floor")}
    times, memory = bench.race(contenders, budget_s=0, min_rounds=3)
    assert calls[:4] == ["vislib", "peer", "floor", "vislib"]  # the warm-up, then vislib's memory
    assert calls[4:] == ["vislib", "peer", "floor", "peer", "floor", "vislib", "floor", "vislib", "peer"]
    assert {name: len(t) for name, t in times.items()} == {"vislib": 3, "peer": 3, "floor": 3}
    assert memory >= 0


def test_row_keeps_each_peers_fastest_setting_and_pairs_ratios_by_round():
    times = {
        "vislib": [1.0, 2.0, 1.2],
        "Captum (internal_batch_size=16)": [2.0, 4.0, 2.0],
        "Captum (internal_batch_size=32)": [1.0, 2.5, 1.0],  # Captum's fastest setting (median 1.0)
        "torchcam": [1.1, 1.9, 1.3],  # median 1.3: slower than Captum's best
        "floor (batches of 16)": [0.5, 1.0, 0.8],  # the fastest floor (median 0.8)
        "floor (batches of 32)": [0.9, 0.9, 0.9],
    }
    row = bench.row("case", "model", 64, 16, {"times": times, "memory": 12.0})
    assert row["peers"] == {"Captum (internal_batch_size=32)": 1.0, "torchcam": 1.3}
    assert row["floor"] == 0.8 and row["floor_setting"] == "floor (batches of 16)"
    assert row["vs_peer"] == pytest.approx(1.0)  # median of 1.0/1.0, 2.0/2.5, 1.2/1.0
    assert row["vs_floor"] == pytest.approx(2.0)  # median of 1.0/0.5, 2.0/1.0, 1.2/0.8
    assert row["rounds"] == 3 and row["vislib"] == 1.2
