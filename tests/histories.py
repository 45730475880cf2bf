"""What the model-call tests share: training histories grown by items the users have not seen
(a user who just interacted, as the predictor's fresh history brings it)."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def grown_histories(model, rows: Iterable[int], fresh: int, seed: int) -> list[list[str]]:
    """For each training row of `model`: that user's training items plus `fresh` items it has
    not seen, as item ids."""
    rng = np.random.default_rng(seed)
    data, out = model.data_, []
    for row in rows:
        seen = data.matrix.indices[data.matrix.indptr[row] : data.matrix.indptr[row + 1]]
        added = rng.choice(np.setdiff1d(np.arange(data.n_items), seen), fresh, replace=False)
        out.append(data.item_ids[np.concatenate([seen, added])].tolist())
    return out
