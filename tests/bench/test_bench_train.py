"""bench/bench_train.py on a tiny generated folder: every variant trains, before and plan agree on the metrics, and
the results file holds their epoch times."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "models"))

from test_train import write_synthetic_ml1m

from bench import bench_train


def test_bench_train_before_and_after_agree(tmp_path):
    from hstu import dropout, evaluate
    from hstu.encoder import HSTUEncoder

    data = write_synthetic_ml1m(tmp_path / "data", users=12, length=10)
    rows = bench_train.main(["--data-dir", str(data), "--epochs", "2", "--batch-size", "4", "--max-seq-len", "8",
                              "--tag", "smoke", "--out", str(tmp_path)])
    before, plan, after = rows
    assert [r["variant"] for r in rows] == ["before", "plan", "after"]
    assert all(len(r["epoch_s"]) == 2 and all(s > 0 for s in r["epoch_s"]) for r in rows)
    # the plan changes the arithmetic's order only: same batches, same model
    for key in ("valid_NDCG@10", "valid_HR@10", "valid_RMSE", "loss"):
        assert plan[key] == pytest.approx(before[key], abs=2e-3), key
    # the cheap dropout mask is another random stream: another loss, of the same size
    assert after["loss"] != plan["loss"] and after["loss"] == pytest.approx(plan["loss"], rel=0.2)
    saved = json.loads((tmp_path / "bench_train_smoke.json").read_text())
    assert [r["variant"] for r in saved["rows"]] == ["before", "plan", "after"] and saved["header"]["epochs"] == 2
    # the switches are restored for whatever runs next
    assert HSTUEncoder.use_plan and evaluate.SORT_BY_LENGTH and dropout.FAST_CPU


def test_bench_train_rejects_unknown_variant():
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--variants", "fast"])
