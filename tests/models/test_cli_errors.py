"""The command line refuses bad flags by name (argparse ranges), never shows a traceback for them, keeps torch
out of ``--help``, draws no progress bars into pipes; library errors name fields, not flags."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import write_synthetic_ml1m

from hstu.checkpoint import load_checkpoint
from hstu.cli import _parser, main
from hstu.config import ArgumentError
from hstu.train import resolve_device

TINY = ["--epochs", "1", "--batch-size", "4", "--dim", "16", "--max-seq-len", "8", "--num-negatives", "8"]


def usage_error(argv, capsys) -> str:
    """stderr of a command that argparse refuses (exit status 2)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_ml1m(tmp_path_factory.mktemp("cli") / "data", users=12, length=8)


TRAIN_FLAG_CASES = [
    (["--batch-size", "-4"], "argument --batch-size: must be an integer >= 1, got '-4'"),
    (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    (["--eval-batch-size", "0"], "argument --eval-batch-size: must be an integer >= 1"),
    (["--num-negatives", "0"], "argument --num-negatives: must be an integer >= 1"),
    (["--num-negatives", "-3"], "argument --num-negatives: must be an integer >= 1"),
    (["--num-targets", "0"], "argument --num-targets: must be an integer >= 1"),
    (["--epochs", "0"], "argument --epochs: must be an integer >= 1"),
    (["--epochs", "-1"], "argument --epochs: must be an integer >= 1"),
    (["--patience", "0"], "argument --patience: must be an integer >= 1"),
    (["--temperature", "0"], "argument --temperature: must be a finite number > 0"),
    (["--temperature", "-1"], "argument --temperature: must be a finite number > 0"),
    (["--rating-loss-weight", "nan"], "argument --rating-loss-weight: must be a finite number >= 0"),
    (["--lr", "inf"], "argument --lr: must be a finite number > 0"),
    (["--lr", "0"], "argument --lr: must be a finite number > 0"),
    (["--dropout", "1"], "argument --dropout: must be a finite number in [0, 1)"),
    (["--seed", "-1"], "argument --seed: must be an integer in [0, 4294967295]"),
    (["--dim", "2.5"], "argument --dim: must be an integer >= 1, got '2.5'"),
    (["--device", "gpu"], "argument --device: 'gpu' is not a device"),
    (["--device", "tpu"], "argument --device: 'tpu' is not a device"),
    (["--rating-weight", "0.5"], "unrecognized arguments: --rating-weight"),
]


@pytest.mark.parametrize("flags, expected", TRAIN_FLAG_CASES)
def test_train_flags_are_checked_by_name(tmp_path, capsys, flags, expected):
    err = usage_error(["train", "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "out"), *flags], capsys)
    assert expected in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_devices_are_named(tmp_path, capsys):
    for device in ("cuda", "cuda:1"):
        assert "argument --device: " + repr(device) + ": CUDA is not available" in usage_error(
            ["train", "--device", device], capsys)
    if not torch.backends.mps.is_available():
        assert "MPS is not available" in usage_error(["eval", "--checkpoint", "x", "--device", "mps"], capsys)


def test_output_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert "argument --output-dir: " in usage_error(["train", "--output-dir", str(tmp_path / "file")], capsys)


def test_cross_flag_and_data_errors_name_the_flag_or_the_data(data, tmp_path, capsys):
    out = ["--output-dir", str(tmp_path / "out")]
    assert main(["train", "--data-dir", str(data), *out, *TINY, "--num-heads", "3"]) == 2
    assert "argument --num-heads: must divide dim = 16, got 3" in capsys.readouterr().err
    few = tmp_path / "few"
    few.mkdir()
    (few / "ratings.dat").write_text("1::10::5::1\n1::20::4::2\n2::10::3::5\n")
    assert main(["train", "--data-dir", str(few), *out, *TINY]) == 2
    err = capsys.readouterr().err
    assert "none of its 2 users has 3 or more ratings" in err and str(few) in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, expected", [
    (["eval", "--batch-size", "-5"], "argument --batch-size: must be an integer >= 1, got '-5'"),
    (["eval", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    (["recommend", "--user", "1", "-k", "0"], "argument -k: must be an integer >= 1"),
    (["recommend", "--user", "1", "--retrieve-k", "0"], "argument --retrieve-k: must be an integer >= 1"),
    (["recommend", "--user", "1", "--blend-weight", "2"], "argument --blend-weight: must be a finite number in [0, 1]"),
    (["recommend", "--user", "1", "--blend-weight", "nan"], "argument --blend-weight: must be a finite number"),
    (["recommend", "--user", "1", "--rating-weight", "0.3"], "unrecognized arguments: --rating-weight"),
])
def test_eval_and_recommend_flags_are_checked(capsys, argv, expected):
    assert expected in usage_error([argv[0], "--checkpoint", "x.pt", *argv[1:]], capsys)


def test_every_flag_has_help():
    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"hstu {name} {action.option_strings} has no help text"


def test_help_does_not_import_torch():
    code = ("import sys\nfrom hstu.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['eval', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("no torch")


def test_train_draws_no_bars_into_a_pipe_and_takes_the_rating_loss_weight(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "--data-dir", str(data), "--output-dir", str(out), *TINY,
                 "--rating-loss-weight", "0.5"]) == 0
    captured = capsys.readouterr()
    assert "test HR@10" in captured.out
    # tqdm writes its bars (with "it/s" or "s/it") to stderr; captured stderr is not a terminal
    assert "it/s" not in captured.err and "s/it" not in captured.err and "\r" not in captured.err
    assert load_checkpoint(out / "best.pt", require=("train_config",))["train_config"]["rating_loss_weight"] == 0.5


def test_recommend_k_above_retrieve_k_names_both_flags(tmp_path, capsys):
    assert main(["recommend", "--checkpoint", str(tmp_path / "x.pt"), "--user", "1", "-k", "20",
                 "--retrieve-k", "10"]) == 2
    assert "argument -k: 20 is more than --retrieve-k 10" in capsys.readouterr().err


def test_library_errors_name_fields_not_flags(data):
    from hstu.data.movielens import load_movielens
    from hstu.serving import recommend, user_history

    for name in ("gpu", "tpu"):
        with pytest.raises(ArgumentError) as err:
            resolve_device(name)
        assert err.value.name == "device" and "--" not in str(err.value)
    loaded = load_movielens(data)
    with pytest.raises(ArgumentError) as err:
        user_history(loaded, 999)
    assert err.value.name == "user_id" and "--" not in str(err.value) and "no such user 999" in str(err.value)
    with pytest.raises(ArgumentError) as err:
        recommend(None, loaded, 3, k=0)
    assert err.value.name == "k" and "-k" not in str(err.value)


@pytest.mark.parametrize("command", ["eval", "recommend"])
def test_ctrl_c_in_eval_and_recommend_exits_130(monkeypatch, capsys, command):
    from hstu import serving

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(serving, "load_for_inference", interrupted)
    assert main([command, "--checkpoint", "x.pt", "--user", "1"][: 3 if command == "eval" else 5]) == 130
    assert capsys.readouterr().err.strip() == f"hstu {command}: interrupted"


def test_preset_sets_the_model_size_and_flags_override_it():
    from hstu.cli import _train_config

    def model_of(*flags):
        return _train_config(_parser().parse_args(["train", *flags])).model

    assert model_of() == {}
    assert model_of("--preset", "large") == {"num_layers": 8, "num_heads": 2}
    assert model_of("--preset", "large", "--num-layers", "4", "--input", "sum") == {
        "num_layers": 4, "num_heads": 2, "input_mode": "sum"}
    assert model_of("--position-embedding", "--negatives", "position", "--item-init-std", "0.02") == {
        "position_embedding": True, "negatives": "position", "item_init_std": 0.02}
