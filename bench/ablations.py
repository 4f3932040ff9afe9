"""The seed's ablations of HSTU: each row one change of ``hstu train``'s defaults, trained for the same epochs from
the same seeds and tested by the same evaluation (the runner of bench/recipe_experiments.py).

Rows: SiLU vs softmax attention; relative bias both / position / time / none; with vs without the action input
(items only, as SASRec sees them); 1 vs 2 heads; 2 vs 4 layers. Results: ``bench/results/ablations_<data>.{json,md}``
(mean and min..max over the seeds of HR@10, NDCG@10, RMSE, best epoch, seconds per epoch).

    python bench/ablations.py --data-dir ../shared/data/ml-100k --epochs 40 --seeds 0,1,2
    python bench/ablations.py --data-dir ../shared/data/ml-1m-half --variants default,softmax --seeds 0
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import recipe_experiments

ABLATIONS = {
    "default": ([], "SiLU attention, position + time bias, actions, 1 head, 2 layers"),
    "softmax": (["--attn-activation", "softmax"], "softmax attention instead of SiLU"),
    "bias-position": (["--attn-bias", "position"], "position bias only"),
    "bias-time": (["--attn-bias", "time"], "time bias only"),
    "bias-none": (["--attn-bias", "none"], "no relative bias"),
    "no-actions": (["--no-actions"], "items only: no action input"),
    "heads-2": (["--num-heads", "2"], "2 heads"),
    "layers-4": (["--num-layers", "4"], "4 layers"),
}


def main(argv=None):
    return recipe_experiments.main(argv, variants=ABLATIONS, stem="ablations", title="Ablations", doc=__doc__)


if __name__ == "__main__":
    main()
