"""Smoke test of bench/bench_mfalcon.py: the quick mode in-process on the CPU, and its FLOP-ratio bound."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_mfalcon", ROOT / "bench" / "bench_mfalcon.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_ml1m(folder: Path, users=7, items=40, length=52, seed=0) -> Path:
    """ML-1M-format ratings: user u rates every item once (in a random order), then length - u - items more (histories of 41 to 51 events)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for user in range(1, users + 1):
        t = 978300000 + user * 1000
        order = np.concatenate([rng.permutation(items), rng.integers(0, items, length - user - items)])
        for item in order:
            t += int(rng.integers(0, 50000))
            lines.append(f"{user}::{(item + 1) * 10}::{rng.integers(1, 6)}::{t}")
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    return folder


def test_flop_bound_at_the_movielens_shape():
    bench = load_bench()
    f = bench.flop_counts(199, 64, 2)
    # per layer: 200 tokens * 10 D^2 + 4 D * 200 * 201 / 2; embedding 6 D^2 per token
    assert f["full_forward"] == 200 * (6 + 20) * 64**2 + 2 * 4 * 64 * 20100
    assert f["cached_step"] == (6 + 20) * 64**2 + 2 * 4 * 64 * 200
    assert f["bound_scoring"] == pytest.approx(151.2, abs=0.1)
    assert bench.flop_counts(199, 64, 2, embedding=False)["bound_scoring"] == pytest.approx(144.7, abs=0.1)
    # one pass of history + m candidates tends to the scoring bound from below as m grows
    b = [bench.method_bound("one-pass", m, 199, 64, 2) for m in (100, 1000, 3706)]
    assert b[0] < b[1] < b[2] < f["bound_scoring"]
    assert bench.method_bound("mfalcon-prefill+scoring", 3706, 199, 64, 2) < f["bound_scoring"]


def test_quick_run_writes_results_and_the_methods_agree(tmp_path):
    bench = load_bench()
    data = write_ml1m(tmp_path / "data")
    out = tmp_path / "out"
    result = bench.main([
        "--quick", "--device", "cpu", "--no-fused", "--out", str(out), "--data-dir", str(data), "--no-plot",
        "--no-progress", "--repeats", "1", "--warmup", "0", "--max-users", "5", "--tag", "test",
        "--note", "smoke",
    ])
    saved = json.loads((out / "mfalcon_test_quick.json").read_text())
    assert (out / "mfalcon_test_quick.csv").is_file()
    assert set(saved) == {"header", "check", "rows", "ranking"}
    h = saved["header"]
    for key in ("device", "torch", "triton", "dtype", "backend", "fused", "model", "history", "m", "bm",
                "naive_batch", "flops", "backends_ran", "note", "commit"):
        assert key in h
    assert h["dtype"] == "fp32" and h["fused"] is False and h["history"] == 31 and h["note"] == "smoke"
    assert h["model"]["max_seq_len"] == 32
    assert h["backends_ran"]["mfalcon scoring"] == {"hstu_cached_attention": ["torch"]}

    # (c) agrees with (b) on the candidate outputs, and so does (a)
    check = saved["check"]
    assert check["ok"] and check["reference"] == "one-pass"
    assert set(check["max_abs_err"]) == {"naive", "mfalcon bm=8", "mfalcon bm=32"}
    assert max(check["max_abs_err"].values()) < 1e-5

    rows = saved["rows"]
    methods = {(r["method"], r["bm"], r["m"]) for r in rows}
    for m in (16, 64):
        assert ("naive", None, m) in methods and ("one-pass", None, m) in methods
        for bm in (8, 32):
            assert ("mfalcon-scoring", bm, m) in methods and ("mfalcon-prefill+scoring", bm, m) in methods
    for r in rows:
        assert r["median_s"] > 0 and r["cands_per_s"] > 0 and r["bound"] >= 1 and r["speedup_vs_naive"] > 0
        assert r["speedup_over_bound"] == pytest.approx(r["speedup_vs_naive"] / r["bound"])

    rank = saved["ranking"]
    assert rank["users"] == 5 and rank["data_users"] == 7 and rank["items"] == rank["model_num_items"] == 40
    assert rank["per_user_ms"] > 0
    assert rank["extrapolated_6040_s"] == pytest.approx(rank["per_user_ms"] * 6040 / 1e3)
    assert result["ranking"] == rank


def test_ranking_is_skipped_without_data(tmp_path, capsys):
    bench = load_bench()
    result = bench.main([
        "--quick", "--device", "cpu", "--no-fused", "--out", str(tmp_path), "--data-dir", str(tmp_path / "none"),
        "--no-plot", "--repeats", "1", "--warmup", "0", "--m", "8", "--bm", "4",
    ])
    assert result["ranking"] is None
    assert "ranking skipped" in capsys.readouterr().out


def test_bf16_autocast_run_agrees_within_its_tolerance(tmp_path):
    bench = load_bench()
    result = bench.main([
        "--quick", "--device", "cpu", "--no-fused", "--dtype", "bf16", "--out", str(tmp_path), "--no-rank",
        "--no-plot", "--repeats", "1", "--warmup", "0", "--m", "8", "--bm", "4",
    ])
    assert result["header"]["dtype"] == "bf16" and "autocast" in result["header"]["dtype_desc"]
    assert result["check"]["ok"] and 0 < result["check"]["tolerance"] <= 0.5
