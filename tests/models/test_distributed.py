"""Data-parallel training under torchrun (CPU, gloo, 2 ranks): the same run as one process with the same global
batch, the same metrics, and a dead rank ends the others with a message instead of a hang."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import write_synthetic_ml1m

from hstu import distributed
from hstu.checkpoint import load_checkpoint
from hstu.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--dim", "16", "--num-layers", "1", "--max-seq-len", "8", "--num-negatives", "8", "--dropout", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra) -> dict:
    out = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", **extra}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in extra:
            out.pop(name, None)
    return out


def train_args(data, out, *more):
    return ["train", "--data-dir", str(data), "--output-dir", str(out), "--batch-size", "4", "--device", "cpu",
            "--no-progress", *TINY, *more]


def records(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 12 users in batches of 4: every global batch splits 2 + 2
    return write_synthetic_ml1m(tmp_path_factory.mktemp("ddp") / "data", users=12, length=8)


def test_shards_cover_every_item_once():
    for n in (0, 1, 5, 12):
        parts = [distributed.Context(rank=r, world=3).shard(n) for r in range(3)]
        assert [i for p in parts for i in range(n)[p]] == list(range(n))
    rows = [distributed.shard_rows(distributed.Context(rank=r, world=2), 5) for r in range(2)]
    assert sorted(np.concatenate(rows).tolist()) == list(range(10))


@pytest.mark.parametrize("negatives", ["sequence", "position"])
def test_two_ranks_train_the_same_run_as_one_process(data, tmp_path, negatives):
    single = tmp_path / "single"
    cfg = TrainConfig(data_dir=str(data), output_dir=str(single), epochs=1, batch_size=4, device="cpu",
                      progress=False, patience=100,
                      model=dict(dim=16, num_layers=1, max_seq_len=8, num_negatives=8, dropout=0.0,
                                 negatives=negatives))
    train(cfg, log=lambda *_: None)

    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "hstu",
           *train_args(data, ddp, "--epochs", "1", "--negatives", negatives)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False,
                         env=env(HSTU_DIST_TIMEOUT="60"))
    assert res.returncode == 0, res.stderr[-3000:]
    # rank 0 alone prints
    assert res.stdout.count("test HR@10") == 1 and "data-parallel: 2 ranks (gloo)" in res.stdout

    a, b = load_checkpoint(single / "last.pt")["model"], load_checkpoint(ddp / "last.pt")["model"]
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    one, two = records(single), records(ddp)
    epoch1, epoch2 = (next(r for r in log if r.get("epoch") == 1) for log in (one, two))
    for key in ("loss", "retrieval_loss", "rating_loss", "valid_HR@10", "valid_NDCG@10", "valid_MRR",
                "valid_RMSE", "valid_MAE", "valid_users"):
        assert epoch2[key] == pytest.approx(epoch1[key], rel=1e-4, abs=1e-6), key
    for key in ("test_HR@10", "test_NDCG@10", "test_NDCG@200", "test_MRR", "test_RMSE", "popularity_NDCG@10"):
        assert two[-1][key] == pytest.approx(one[-1][key], rel=1e-4, abs=1e-6), key
    assert epoch2["valid_users"] == 12


def test_a_killed_rank_ends_the_other_with_a_message(data, tmp_path):
    out = tmp_path / "out"
    port = free_port()
    procs = []
    for rank in range(2):
        e = env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port), HSTU_DIST_TIMEOUT="20")
        procs.append(subprocess.Popen([sys.executable, "-m", "hstu", *train_args(data, out, "--epochs", "500",
                                                                                 "--patience", "500")],
                                      env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if (out / "log.jsonl").is_file() and '"epoch"' in (out / "log.jsonl").read_text():
                break
            assert procs[0].poll() is None, procs[0].communicate()[1][-2000:]
            time.sleep(0.2)
        else:
            pytest.fail("no epoch finished within 120 s")
        procs[1].send_signal(signal.SIGKILL)
        start = time.time()
        _, err = procs[0].communicate(timeout=90)
        assert time.time() - start < 60
        assert procs[0].returncode == 1, err[-2000:]
        assert "rank 0 of 2: lost the other ranks" in err and "HSTU_DIST_TIMEOUT" in err, err[-2000:]
        assert "Traceback" not in err, err[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_a_one_process_run_resumes_on_two_ranks(data, tmp_path):
    model = dict(dim=16, num_layers=1, max_seq_len=8, num_negatives=8, dropout=0.0)
    base = dict(data_dir=str(data), batch_size=4, device="cpu", progress=False, patience=100, model=model)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(TrainConfig(**base, output_dir=str(straight), epochs=2), log=lambda *_: None)
    train(TrainConfig(**base, output_dir=str(resumed), epochs=1), log=lambda *_: None)

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "hstu", "train", "--output-dir", str(resumed), "--resume",
           "--epochs", "2", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False,
                         env=env(HSTU_DIST_TIMEOUT="60"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout
    a, b = load_checkpoint(straight / "last.pt")["model"], load_checkpoint(resumed / "last.pt")["model"]
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    assert [r["epoch"] for r in records(resumed) if "epoch" in r] == [1, 2]


def test_a_plain_process_is_single_and_the_timeout_is_checked(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = distributed.from_env()
    assert not ctx.active and ctx.is_main and ctx.shard(5) == slice(0, 5)
    values = torch.ones(3)
    assert ctx.all_reduce_sum(values) is values and values.tolist() == [1, 1, 1]
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "20")
    assert distributed.timeout_seconds() == 20
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=distributed.TIMEOUT_ENV):
            distributed.timeout_seconds()


def test_a_stalled_rank_times_the_other_out_with_a_message(data, tmp_path):
    out = tmp_path / "out"
    port = free_port()
    procs = []
    for rank in range(2):
        e = env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port), HSTU_DIST_TIMEOUT="8")
        procs.append(subprocess.Popen([sys.executable, "-m", "hstu", *train_args(data, out, "--epochs", "500",
                                                                                 "--patience", "500")],
                                      env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.time() + 120
        while not ((out / "log.jsonl").is_file() and '"epoch"' in (out / "log.jsonl").read_text()):
            assert procs[0].poll() is None, procs[0].communicate()[1][-2000:]
            assert time.time() < deadline, "no epoch finished within 120 s"
            time.sleep(0.2)
        # stopped, not dead: its sockets stay open, so only the timeout can end the wait
        procs[1].send_signal(signal.SIGSTOP)
        start = time.time()
        _, err = procs[0].communicate(timeout=90)
        assert 5 < time.time() - start < 60
        assert procs[0].returncode == 1, err[-2000:]
        assert "rank 0 of 2: lost the other ranks" in err and "Traceback" not in err, err[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_a_last_batch_smaller_than_the_rank_count_is_dropped_and_logged(tmp_path):
    # 13 users in batches of 4: one batch of a single user, which 2 ranks cannot share
    data = write_synthetic_ml1m(tmp_path / "data", users=13, length=8)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "hstu", *train_args(data, tmp_path / "out", "--epochs", "1")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False,
                         env=env(HSTU_DIST_TIMEOUT="60"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("dropped, 1 user for 2 ranks") == 1
    assert next(r for r in records(tmp_path / "out") if r.get("epoch") == 1)["valid_users"] == 13
