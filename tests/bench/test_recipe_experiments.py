"""bench/recipe_experiments.py on a tiny generated folder: every asked variant trains, its flags reach the saved
model config, and the results table is written."""

import json
import sys
from pathlib import Path

import pytest

from hstu.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "models"))

from test_train import write_synthetic_ml1m

from bench import recipe_experiments


def test_recipe_experiments_quick_mode(tmp_path):
    data = write_synthetic_ml1m(tmp_path / "data", users=10, length=8)
    argv = ["--data-dir", str(data), "--variants", "default,norm+fine", "--epochs", "1", "--seeds", "0,1",
            "--extra", "--dim 8 --max-seq-len 8 --batch-size 4 --time-query next", "--work-dir", str(tmp_path / "runs"),
            "--out-dir", str(tmp_path), "--tag", "smoke"]
    recipe_experiments.main(argv)
    log = tmp_path / "runs" / "default_seed0" / "log.jsonl"
    written = log.stat().st_mtime_ns
    # --reuse takes the finished runs as they are
    recipe_experiments.main([*argv, "--reuse"])
    assert log.stat().st_mtime_ns == written
    saved = json.loads((tmp_path / "recipe_smoke.json").read_text())
    assert sorted((r["variant"], r["seed"]) for r in saved["runs"]) == [
        ("default", 0), ("default", 1), ("norm+fine", 0), ("norm+fine", 1)]
    assert [s["variant"] for s in saved["summary"]] == ["default", "norm+fine"]
    assert all(0 <= r["NDCG@10"] <= r["HR@10"] <= 1 and r["RMSE"] > 0 for r in saved["runs"])
    config = load_checkpoint(tmp_path / "runs" / "norm+fine_seed1" / "best.pt")["model_config"]
    assert config["input_norm"] is True and config["time_buckets"] == "fine" and config["time_query"] == "next"
    assert load_checkpoint(tmp_path / "runs" / "default_seed0" / "best.pt")["model_config"]["input_norm"] is False
    md = (tmp_path / "recipe_smoke.md").read_text()
    assert "| norm+fine |" in md and "seeds 0,1" in md


@pytest.mark.parametrize("argv", [["--variants", "magic"], ["--epochs", "0"], ["--seeds", "a,b"]])
def test_recipe_experiments_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit):
        recipe_experiments.parse_args(["--data-dir", "x", *argv])
