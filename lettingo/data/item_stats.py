"""Per-item rating statistics over the users of the training splits: what f_Rec may know of an item.

Held-out users' ratings never enter the statistics; a training user's own rating is left out of
that user's lookups (leave-one-user-out), so training cases see what test cases see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from lettingo.data.samples import sample_items

#: Keys of an item dict that hold its statistics among the other training users (see `annotate_items`).
OTHERS_MEAN = "others_mean"
OTHERS_COUNT = "others_count"


@dataclass
class ItemStats:
    """Per-item rating sums and counts over the users of the training splits, leave-one-user-out on lookup."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    likes: dict[str, int] = field(default_factory=dict)
    dislikes: dict[str, int] = field(default_factory=dict)
    #: (user, item) -> (rating, label) of every rating counted, so a user can be left out of their own lookups.
    own: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)

    @classmethod
    def from_samples(cls, samples: pd.DataFrame) -> ItemStats:
        """Statistics over every item (`sample_items`) of every sample; a user's item counts once."""
        stats = cls()
        for sample in samples.to_dict("records"):
            user = str(sample["user_id"])
            for item in sample_items(sample):
                key = (user, str(item["item_id"]))
                if key in stats.own:
                    continue
                stats.own[key] = (float(item["rating"]), str(item["label"]))
        for (_, item_id), (rating, label) in stats.own.items():
            stats.sums[item_id] = stats.sums.get(item_id, 0.0) + rating
            stats.counts[item_id] = stats.counts.get(item_id, 0) + 1
            stats.likes[item_id] = stats.likes.get(item_id, 0) + (label == "like")
            stats.dislikes[item_id] = stats.dislikes.get(item_id, 0) + (label == "dislike")
        return stats

    def lookup(self, item_id: str, user_id: str) -> tuple[float, int, float, float]:
        """(mean rating, count, like share, dislike share) of an item over the other training users.

        An item no other training user rated is (NaN, 0, NaN, NaN).
        """
        item_id = str(item_id)
        total, count = self.sums.get(item_id, 0.0), self.counts.get(item_id, 0)
        likes, dislikes = self.likes.get(item_id, 0), self.dislikes.get(item_id, 0)
        own = self.own.get((str(user_id), item_id))
        if own is not None:
            total, count = total - own[0], count - 1
            likes, dislikes = likes - (own[1] == "like"), dislikes - (own[1] == "dislike")
        if count <= 0:
            return math.nan, 0, math.nan, math.nan
        return total / count, count, likes / count, dislikes / count


def annotate_items(samples: pd.DataFrame, stats: ItemStats) -> pd.DataFrame:
    """The samples with every item (older, recent, target, target windows) carrying `others_mean` and `others_count`:
    its mean rating and rating count among the training users other than the sample's own user."""

    def annotate(item: dict, user: str) -> dict:
        mean, count, _, _ = stats.lookup(str(item["item_id"]), user)
        return {**item, OTHERS_MEAN: None if count == 0 else round(mean, 3), OTHERS_COUNT: int(count)}

    columns = {}
    for column in ("older", "recent"):
        columns[column] = [[annotate(dict(i), str(u)) for i in items]
                           for u, items in zip(samples["user_id"], samples[column], strict=True)]
    columns["target"] = [annotate(dict(t), str(u)) for u, t in zip(samples["user_id"], samples["target"], strict=True)]
    if "targets" in samples:
        columns["targets"] = [[{"target": annotate(dict(w["target"]), str(u)),
                                "recent": [annotate(dict(i), str(u)) for i in w["recent"]]} for w in windows]
                              for u, windows in zip(samples["user_id"], samples["targets"], strict=True)]
    return samples.assign(**columns)
