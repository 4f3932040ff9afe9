"""``bench/gpu_check.sh`` and its final table: a typo there would cost device minutes, so both are checked here."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_summary  # noqa: E402

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1"
skipped="1" tests="4"><testcase name="test_a"/><testcase name="test_b"/><testcase name="test_c"><failure message="x"/>
</testcase><testcase name="test_d"><skipped/></testcase></testsuite></testsuites>"""


def _attention_row(provider, mode, tflops, correct=True):
    return dict(B=16, N=4096, H=4, D=128, batch="jagged", provider=provider, mode=mode, ms=1.5, tflops=tflops,
                correct=correct)


def test_summary_reads_every_stage(tmp_path):
    (tmp_path / "env.txt").write_text("NVIDIA H200 | torch 2.11.0 | triton 3.6.0 | cuda 13.0 | python 3.12.3\n")
    (tmp_path / "pytest_gpu.xml").write_text(JUNIT)
    rows = [_attention_row("triton", "fwd", 412.0), _attention_row("sdpa", "fwd", 535.0),
            _attention_row("triton", "fwd+bwd", 250.0, correct=False)]
    (tmp_path / "attention_x.json").write_text(json.dumps(dict(header={}, rows=rows)))
    mf = dict(check=dict(ok=True), rows=[dict(method="mfalcon-scoring", m=3706, bm=1024, speedup_vs_naive=130.0,
                                              bound=151.0, speedup_over_bound=0.86)],
              ranking=dict(per_user_ms=0.1, extrapolated_6040_s=0.6))
    (tmp_path / "mfalcon_h200.json").write_text(json.dumps(mf))
    for mode, secs in (("unfused", [9.0, 8.0, 8.2]), ("fused", [3.0, 2.0, 2.1])):
        lines = [json.dumps({"epoch": i + 1, "seconds": s, "valid_NDCG@10": 0.1}) for i, s in enumerate(secs)]
        lines.append(json.dumps({"test_NDCG@10": 0.1}))
        (tmp_path / f"train_{mode}.jsonl").write_text("\n".join(lines) + "\n")
    text = gpu_summary.summarise(str(tmp_path))
    assert "NVIDIA H200" in text
    assert "2 passed, 1 failed, 1 skipped (first: test_c)" in text and "| FAIL" in text
    assert "1 failed the correctness gate" in text
    assert "412" in text and "535" in text  # triton beside sdpa
    assert "86% of the 151x bound" in text and "6,040 users: 0.60 s" in text
    assert "unfused 8.2 s/epoch over 3" in text and "fused 3.90x faster" in text


def test_summary_of_an_empty_folder_says_what_is_missing(tmp_path):
    text = gpu_summary.summarise(str(tmp_path))
    for stage in ("install", "gpu tests", "attention", "m-falcon", "train"):
        assert stage in text
    assert text.count("missing") == 5


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")], check=True)
