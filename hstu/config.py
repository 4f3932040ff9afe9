"""Model and training configurations and the ranges their values must lie in.

Torch-free, so that the command line builds its flags, their checks and its help without importing torch.
Library errors name the config field (``ArgumentError.name``); the command line turns that into its flag.
"""

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, Optional

from .actions import NUM_ACTIONS

DATASETS = ("ml-1m", "ml-100k")
ATTN_ACTIVATIONS = ("silu", "softmax")
# names of hstu.bias.TIME_BUCKETS (kept here torch-free for the command line)
TIME_BUCKETS = ("coarse", "fine")
TIME_QUERIES = ("self", "next")
ATTN_BIASES = ("both", "position", "time", "none")
INPUT_MODES = ("mlp", "sum")
# named model sizes for `hstu train --preset`; flags given beside a preset override its values
PRESETS = {
    # the seed's size: D 64, 2 blocks, 1 head (the ModelConfig defaults)
    "default": {},
    # rectools' HSTU-large and Meta's ml-1m large config: 8 blocks, 2 heads (Meta: D 50 at 25 per head)
    "large": {"num_layers": 8, "num_heads": 2},
}
NEGATIVE_DRAWS = ("sequence", "position")


class ArgumentError(ValueError):
    """A bad value for the argument or config field ``name``; ``message`` says what is wrong without the name."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name, self.message = name, message


@dataclass(frozen=True)
class Range:
    """The values a numeric field takes: ``kind`` (int or float, floats always finite) between ``low`` and
    ``high`` (None: unbounded), each end included unless ``*_open``."""

    kind: type
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        low, high = (str(x) if self.kind is int or x is None else f"{x:g}" for x in (self.low, self.high))
        if self.low is not None and self.high is not None:
            return f"{what} in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {high}"
        return what

    def contains(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def check(self, name: str, value):
        """``value`` when it lies in the range, else ``ArgumentError(name, ...)``."""
        if not self.contains(value):
            raise ArgumentError(name, f"must be {self.describe()}, got {value!r}")
        return value

    def parse(self, text: str):
        """``text`` as a value in the range; ValueError (with the message alone) otherwise."""
        try:
            value = self.kind(text)
        except ValueError:
            raise ValueError(f"must be {self.describe()}, got {text!r}") from None
        if not self.contains(value):
            raise ValueError(f"must be {self.describe()}, got {text!r}")
        return value


MODEL_RANGES = {
    "dim": Range(int, 1),
    "num_layers": Range(int, 1),
    "num_heads": Range(int, 1),
    # a history event and the target at least
    "max_seq_len": Range(int, 2),
    "dropout": Range(float, 0, 1, high_open=True),
    "max_attn_len": Range(int, 0),
    "temperature": Range(float, 0, low_open=True),
    "num_negatives": Range(int, 1),
    "item_init_std": Range(float, 0),
}

TRAIN_RANGES = {
    "epochs": Range(int, 1),
    "batch_size": Range(int, 1),
    "lr": Range(float, 0, low_open=True),
    "lr_decay": Range(float, 0, 1, low_open=True),
    "lr_patience": Range(int, 1),
    "lr_decays": Range(int, 0),
    "weight_decay": Range(float, 0),
    "rating_loss_weight": Range(float, 0),
    "num_targets": Range(int, 1),
    "patience": Range(int, 1),
    "eval_batch_size": Range(int, 1),
    # what numpy and torch both take as a seed
    "seed": Range(int, 0, 2**32 - 1),
}


@dataclass
class ModelConfig:
    num_items: int
    num_actions: int = NUM_ACTIONS
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 1
    max_seq_len: int = 200
    dropout: float = 0.2
    attn_activation: str = "silu"
    max_attn_len: int = 0
    fused: bool = False
    temperature: float = 0.05
    # 512, not the references' 128: ahead on ml-1m-half's validation for both seeds tried (docs/recipes.md)
    num_negatives: int = 512
    # a LayerNorm on each block's input before its uvqk projection (as Meta's and rectools' HSTU)
    input_norm: bool = False
    # the time-gap buckets of the relative bias: "coarse" (1 h, 1 d, 1 w, 30 d) or "fine" (seconds to a year)
    time_buckets: str = "fine"
    # the time bias's query time: "self" (each token's own time) or "next" (the time of the event the token
    # predicts, as Meta's and rectools' HSTU; at evaluation and serving the last history token takes the request
    # time, the target's timestamp)
    time_query: str = "next"
    # the ablations: which relative attention bias the blocks use, and whether the input sees the actions
    # (False: every token's action is UNKNOWN, so the model sees items only, as SASRec does)
    attn_bias: str = "both"
    use_actions: bool = True
    # the input token: "mlp" (MLP of the item and action embeddings, concatenated) or "sum" (item embedding x
    # sqrt(D) + action embedding, so the residual stream starts in the output item table's space, as rectools' and
    # Meta's HSTU feed item x sqrt(D))
    input_mode: str = "sum"
    # a learned absolute position embedding added to the input, indexed by the distance from the segment's last
    # history event (1 for it, 2 for the one before, ...; 0 for target tokens), as rectools indexes from the end
    position_embedding: bool = True
    # std of the normal init of the item and action tables (0: D^-1/2); Meta's HSTU uses 0.02
    item_init_std: float = 0.02
    # the retrieval loss's negatives: one draw of num_negatives per "sequence", shared by its positions, or a fresh
    # draw per labelled "position" (as Meta's and rectools' samplers)
    negatives: str = "sequence"

    def __post_init__(self):
        Range(int, 1).check("num_items", self.num_items)
        Range(int, 2).check("num_actions", self.num_actions)
        for name, allowed in MODEL_RANGES.items():
            allowed.check(name, getattr(self, name))
        if self.dim % self.num_heads:
            raise ArgumentError("num_heads", f"must divide dim = {self.dim}, got {self.num_heads}")
        if self.attn_activation not in ATTN_ACTIVATIONS:
            raise ArgumentError("attn_activation", f"must be one of {', '.join(ATTN_ACTIVATIONS)}, "
                                f"got {self.attn_activation!r}")
        if self.fused and self.attn_activation != "silu":
            raise ArgumentError("fused", "the fused kernels are SiLU attention: attn_activation must be 'silu'")
        if self.time_buckets not in TIME_BUCKETS:
            raise ArgumentError("time_buckets", f"must be one of {', '.join(TIME_BUCKETS)}, got {self.time_buckets!r}")
        if self.attn_bias not in ATTN_BIASES:
            raise ArgumentError("attn_bias", f"must be one of {', '.join(ATTN_BIASES)}, got {self.attn_bias!r}")
        if self.input_mode not in INPUT_MODES:
            raise ArgumentError("input_mode", f"must be one of {', '.join(INPUT_MODES)}, got {self.input_mode!r}")
        if self.negatives not in NEGATIVE_DRAWS:
            raise ArgumentError("negatives", f"must be one of {', '.join(NEGATIVE_DRAWS)}, got {self.negatives!r}")
        if self.time_query not in TIME_QUERIES:
            raise ArgumentError("time_query", f"must be one of {', '.join(TIME_QUERIES)}, got {self.time_query!r}")


# model fields whose default changed, with the value they had before: a config saved before the change lacks
# them and means these (hstu 0.x checkpoints: the MLP input, no position embedding, D^-1/2 init, coarse time
# buckets queried at each token's own time)
LEGACY_MODEL_VALUES = {"input_mode": "mlp", "position_embedding": False, "item_init_std": 0.0, "time_buckets": "coarse",
                       "time_query": "self"}


def saved_model_fields(saved: dict) -> dict:
    """A saved model config with the fields it predates filled in as they were then."""
    return {**LEGACY_MODEL_VALUES, **saved}


# the model fields a training run chooses (num_items and num_actions come from the data)
MODEL_FIELDS = tuple(f.name for f in fields(ModelConfig) if f.name not in ("num_items", "num_actions"))


@dataclass
class TrainConfig:
    data_dir: Optional[str] = None
    dataset: str = "ml-1m"
    output_dir: str = "runs/hstu"
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    # after lr_patience epochs in a row without a better validation NDCG@10 the lr is multiplied by lr_decay and
    # the count starts again, at most lr_decays times; then patience such epochs stop the run (0 decays: a
    # constant lr)
    lr_decay: float = 0.25
    lr_patience: int = 5
    lr_decays: int = 2
    weight_decay: float = 0.0
    rating_loss_weight: float = 1.0
    num_targets: int = 4
    # 20: the 512-negative runs still improved after 10-epoch plateaus at the lowest lr (docs/recipes.md)
    patience: int = 20
    eval_batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    resume: bool = False
    overwrite: bool = False
    skip_nonfinite: bool = False
    progress: bool = True
    model: Dict = field(default_factory=dict)

    def __post_init__(self):
        for name, allowed in TRAIN_RANGES.items():
            allowed.check(name, getattr(self, name))
        if self.dataset not in DATASETS:
            raise ArgumentError("dataset", f"must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.resume and self.overwrite:
            raise ArgumentError("overwrite", "cannot go with resume: one continues a run, the other replaces it")
        unknown = sorted(set(self.model) - set(MODEL_FIELDS))
        if unknown:
            raise ArgumentError("model", f"unknown model fields {', '.join(unknown)} (known: {', '.join(MODEL_FIELDS)})")
        # the model's own checks, before any data is read
        ModelConfig(num_items=1, **self.model)

    def to_dict(self) -> dict:
        return asdict(self)


# what a resumed run may change: none of them changes the model, the data or the sequence of batches
RESUMABLE = ("epochs", "patience", "lr", "lr_decay", "lr_patience", "lr_decays", "eval_batch_size", "device",
             "amp", "skip_nonfinite")
# training fields whose default changed, with the value a run saved before the change had (a constant lr)
LEGACY_TRAIN_VALUES = {"lr_decay": 0.25, "lr_patience": 5, "lr_decays": 0}
# how a run is started and shown, not what it computes: never compared on resume
RUN_CONTROL = ("resume", "overwrite", "progress")
