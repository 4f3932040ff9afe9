"""The action vocabulary of the fused (item, action) input embedding.

Ids 0 and 1 are reserved: 0 pads, 1 is UNKNOWN, the action of a candidate (target) token whose outcome is what
the model predicts. Ratings map to actions as in the HSTU paper's MovieLens setup.
"""

import numpy as np

PAD = 0
UNKNOWN = 1
NEGATIVE = 2  # rating < 3
NEUTRAL = 3  # rating == 3
POSITIVE = 4  # rating >= 4
NUM_ACTIONS = 5
NAMES = {PAD: "pad", UNKNOWN: "unknown", NEGATIVE: "negative", NEUTRAL: "neutral", POSITIVE: "positive"}


def actions_from_ratings(ratings: np.ndarray) -> np.ndarray:
    """Map integer ratings 1..5 (any shape) to action ids (int64, same shape)."""
    ratings = np.asarray(ratings)
    return np.where(ratings >= 4, POSITIVE, np.where(ratings == 3, NEUTRAL, NEGATIVE)).astype(np.int64)
