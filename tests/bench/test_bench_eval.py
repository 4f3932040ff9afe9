"""Smoke test of bench/bench_eval.py on a tiny generated folder: it runs, and its results file holds users/s."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "models"))

from test_train import write_synthetic_ml1m


def test_bench_eval_writes_users_per_second(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_eval", ROOT / "bench" / "bench_eval.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = write_synthetic_ml1m(tmp_path / "data", users=10, length=8)
    bench.main(["--data-dir", str(data), "--device", "cpu", "--batch-size", "4,16", "--dim", "16", "--layers", "1",
                "--max-seq-len", "8", "--repeats", "1", "--warmup", "0", "--tag", "smoke", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "eval_smoke.json").read_text())
    assert [r["batch_size"] for r in result["rows"]] == [4, 16]
    assert all(r["users"] == 10 and r["users_per_s"] > 0 for r in result["rows"])
    # the batch size changes the speed, never the numbers
    assert result["rows"][0]["NDCG@10"] == result["rows"][1]["NDCG@10"]
    assert result["header"]["data"]["users"] == 10 and result["header"]["device_type"] == "cpu"
