"""bench/ablations.py on a tiny generated folder: each ablation's flags reach the trained model."""

import json
import sys
from pathlib import Path

import pytest

from hstu.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "models"))

from test_train import write_synthetic_ml1m

from bench import ablations


def test_ablations_quick_mode(tmp_path):
    data = write_synthetic_ml1m(tmp_path / "data", users=8, length=8)
    summary = ablations.main(["--data-dir", str(data), "--variants", "softmax,bias-time,no-actions", "--epochs", "1",
                              "--extra", "--dim 8 --max-seq-len 8 --batch-size 4", "--work-dir", str(tmp_path / "runs"),
                              "--out-dir", str(tmp_path), "--tag", "smoke"])
    assert [s["variant"] for s in summary] == ["softmax", "bias-time", "no-actions"]
    config = lambda v: load_checkpoint(tmp_path / "runs" / f"{v}_seed0" / "best.pt")["model_config"]
    assert config("softmax")["attn_activation"] == "softmax"
    assert config("bias-time")["attn_bias"] == "time"
    assert config("no-actions")["use_actions"] is False
    saved = json.loads((tmp_path / "ablations_smoke.json").read_text())
    assert saved["header"]["benchmark"] == "ablations"
    assert (tmp_path / "ablations_smoke.md").read_text().startswith("# Ablations on data")


def test_ablations_rejects_a_recipe_variant():
    with pytest.raises(SystemExit):
        ablations.recipe_experiments.parse_args(["--data-dir", "x", "--variants", "fine-time"], ablations.ABLATIONS)
