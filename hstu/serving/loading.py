"""A checkpoint with the data it was trained on, ready for inference."""

from pathlib import Path

from ..checkpoint import CheckpointError, load_checkpoint, non_finite_tensors
from ..config import ArgumentError
from ..model import HSTURecommender
from ..train import load_sequences, resolve_device


def load_for_inference(checkpoint, data_dir: str | None = None, dataset: str = "ml-1m", device: str = "auto"):
    """-> (model in eval mode, MovieLensData, leave-one-out UserSequences, device). The data folder defaults to
    the one the checkpoint was trained on; its items must be the checkpoint's. ``CheckpointError`` names the
    file when it is damaged, foreign, or holds weights that do not fit its config or are not finite."""
    dev = resolve_device(device)
    path = Path(checkpoint)
    ckpt = load_checkpoint(path, map_location=dev, require=("model_config", "model", "item_ids", "data_dir"))
    try:
        model = HSTURecommender.from_config(ckpt["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} has an unusable model_config ({err})") from None
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path}: its weights do not fit its model_config ({first[:200]})") from None
    bad = non_finite_tensors(ckpt["model"])
    if bad:
        raise CheckpointError(f"checkpoint {path} holds non-finite weights ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}): the run that wrote it diverged")
    data, seqs = load_sequences(data_dir or ckpt["data_dir"], dataset)
    if data.item_ids.tolist() != list(ckpt["item_ids"]):
        raise ArgumentError(
            "data_dir", f"the items in {data.data_dir} differ from those {path} was trained on ({ckpt['data_dir']}): "
            "load the training data"
        )
    model = model.to(dev)
    model.eval()
    return model, data, seqs, dev
