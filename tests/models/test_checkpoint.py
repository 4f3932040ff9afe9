"""Checkpoints: checksummed, refused with one line naming the file when damaged, foreign or mismatched."""

import pickle

import pytest
import torch
from test_train import SMALL_MODEL, write_synthetic_ml1m

from hstu.checkpoint import CheckpointError, load_checkpoint, remove_stale_temporaries, save_checkpoint
from hstu.cli import main
from hstu.train import TrainConfig, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    data = write_synthetic_ml1m(root / "data", users=12, length=8)
    cfg = TrainConfig(data_dir=str(data), output_dir=str(root / "out"), epochs=1, batch_size=4, progress=False,
                      model={**SMALL_MODEL, "max_seq_len": 8, "num_negatives": 8})
    train(cfg, log=lambda *_: None)
    return {"root": root, "data": data, "best": root / "out" / "best.pt"}


def test_round_trip_and_header(tmp_path):
    payload = {"model_config": {"dim": 4}, "model": {"w": torch.arange(6.0)}, "numbers": [1, 2.5, None]}
    save_checkpoint(tmp_path / "c.pt", payload)
    raw = (tmp_path / "c.pt").read_bytes()
    assert raw.startswith(b"hstu-checkpoint 1 sha256=")
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["numbers"] == [1, 2.5, None] and torch.equal(back["model"]["w"], payload["model"]["w"])
    assert list(tmp_path.iterdir()) == [tmp_path / "c.pt"]


def test_a_flipped_bit_is_caught(run, tmp_path):
    raw = bytearray(run["best"].read_bytes())
    raw[len(raw) // 2] ^= 0x10
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt: its payload's sha256 differs"):
        load_checkpoint(bad)


def _payload(run):
    return load_checkpoint(run["best"])


BAD_FILES = {
    "truncated": (lambda run: run["best"].read_bytes()[: run["best"].stat().st_size // 2], "truncated"),
    "empty": (lambda run: b"", "empty"),
    "random": (lambda run: bytes(range(256)) * 40, "not an hstu checkpoint"),
    "plain-pickle": (lambda run: pickle.dumps({"model_config": {}, "model": {}}), "not an hstu checkpoint"),
    "torch-save": (lambda run: _torch_bytes(_payload(run)), "not an hstu checkpoint"),
    "bit-flipped": (lambda run: _flip(run["best"].read_bytes()), "corrupt"),
    "extra-bytes": (lambda run: run["best"].read_bytes() + b"junk", "bytes past"),
}


def _torch_bytes(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _flip(raw: bytes) -> bytes:
    raw = bytearray(raw)
    raw[-100] ^= 0x01
    return bytes(raw)


def _one_line_error(capsys, path):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(path) in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("kind", list(BAD_FILES))
@pytest.mark.parametrize("command", ["eval", "recommend"])
def test_bad_checkpoint_files_get_one_line(run, tmp_path, capsys, kind, command):
    make, expected = BAD_FILES[kind]
    path = tmp_path / f"{kind}.pt"
    path.write_bytes(make(run))
    extra = ["--user", "3"] if command == "recommend" else []
    assert main([command, "--checkpoint", str(path), *extra]) == 2
    assert expected in _one_line_error(capsys, path)


def _saved_variant(run, tmp_path, name, change):
    payload = _payload(run)
    change(payload)
    path = tmp_path / name
    save_checkpoint(path, payload)
    return path


@pytest.mark.parametrize("name, change, expected", [
    ("no-items.pt", lambda p: p.pop("item_ids"), "lacks item_ids"),
    ("foreign-dict.pt", lambda p: [p.clear(), p.update(weights=torch.zeros(2))], "lacks model_config"),
    ("wrong-size.pt", lambda p: p["model_config"].update(dim=32), "weights do not fit its model_config"),
    ("bad-config.pt", lambda p: p["model_config"].update(colour="red"), "unusable model_config"),
    ("nan-weights.pt", lambda p: p["model"]["rating_head.0.weight"].fill_(float("nan")), "non-finite weights"),
])
def test_mismatched_or_non_finite_checkpoints_are_refused(run, tmp_path, capsys, name, change, expected):
    path = _saved_variant(run, tmp_path, name, change)
    assert main(["eval", "--checkpoint", str(path)]) == 2
    assert expected in _one_line_error(capsys, path)
    assert main(["recommend", "--checkpoint", str(path), "--user", "3"]) == 2
    assert expected in _one_line_error(capsys, path)


def test_missing_file_and_folder(run, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "no checkpoint at" in _one_line_error(capsys, tmp_path / "none.pt")
    assert main(["eval", "--checkpoint", str(tmp_path)]) == 2
    assert "is a folder" in _one_line_error(capsys, tmp_path)


def test_other_data_than_the_checkpoints_is_refused(run, tmp_path, capsys):
    other = write_synthetic_ml1m(tmp_path / "other", users=12, items=25, length=8)
    assert main(["eval", "--checkpoint", str(run["best"]), "--data-dir", str(other)]) == 2
    err = capsys.readouterr().err
    assert "argument --data-dir: the items in" in err and "Traceback" not in err


def test_stale_temporaries_are_removed(tmp_path):
    for name in ("best.pt.abc123.tmp", "last.pt.x_y.tmp", "other.pt.q.tmp", "last.pt"):
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path, ("best.pt", "last.pt"))
    assert sorted(p.name for p in removed) == ["best.pt.abc123.tmp", "last.pt.x_y.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "other.pt.q.tmp"]
