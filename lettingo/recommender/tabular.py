"""A tuned non-LLM f_Rec: gradient-boosted trees over numbers of the recent window and the target item.

Features of one case (a user, the K recent items before a target, the target):

* the recent window: its ratings newest first (padded to K with NaN), their mean and spread, the
  share of each label, how many recent items share an attribute (genre) with the target and the
  mean rating of those (target-genre agreement), and the user's mean offset from the item means;
* the target item, from the ratings of the users of the *training* splits only (``item_stats_samples``,
  never test users): its mean rating, rating count and like/dislike shares (NaN and count 0 for an
  item no training user rated), the item mean plus the user's recent offset, and its top attributes.
  A user whose own ratings are in the statistics is left out of them (leave-one-user-out), so a
  training case never sees its own answer and training users look like test users;
* with ``with_oracle`` (the structured ceiling): the numbers behind the prompt's user facts, from the
  older history only (the last ``history_len`` items of ``older``, never the recent items or the
  target): mean rating, spread, label and rating-value shares, the user's mean rating of the target's
  attributes and how many older items carry them, and the user's offset from the item means.

The classifier is scikit-learn's HistGradientBoostingClassifier with early stopping, its settings
chosen by a grid search over user-grouped folds (GroupKFold: a user's cases are never split).
"""

from __future__ import annotations

import logging
import math
import pickle
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import GridSearchCV, GroupKFold
from threadpoolctl import threadpool_limits

from lettingo.data.item_stats import ItemStats
from lettingo.data.samples import older_history, plain_item
from lettingo.data.schema import LABELS, attribute_list
from lettingo.recommender.cases import LABEL_INDEX, RecCase, case_from_sample, shifted_cases

log = logging.getLogger(__name__)

Item = Mapping[str, Any]

#: The grid searched when none is given: 8 settings, about 25 fits with 3 folds.
DEFAULT_GRID: dict[str, list[Any]] = {
    "learning_rate": [0.05, 0.1],
    "max_leaf_nodes": [7, 15],
    "l2_regularization": [0.0, 1.0],
    "max_iter": [300],
}
#: Splits whose users must never feed the item statistics or the training cases.
HELD_OUT_SPLITS = frozenset({"test"})
#: More distinct rating values than this and the rating histogram is left out (label shares remain).
MAX_RATING_VALUES = 10


def refuse_held_out(what: str, frame: pd.DataFrame) -> None:
    """Raise when ``frame`` (named ``what`` in the error) holds users of the held-out splits."""
    if "split" in frame.columns and frame["split"].isin(HELD_OUT_SPLITS).any():
        raise ValueError(f"{what} holds users of the held-out splits {sorted(HELD_OUT_SPLITS)}")


def _ratings(items: Sequence[Item]) -> np.ndarray:
    return np.fromiter((float(i["rating"]) for i in items), dtype=float, count=len(items))


def _mean(values: Sequence[float] | np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def _std(values: Sequence[float] | np.ndarray) -> float:
    return float(np.std(values)) if len(values) else math.nan


def _label_shares(items: Sequence[Item]) -> list[float]:
    if not items:
        return [math.nan] * len(LABELS)
    counts = Counter(str(i["label"]) for i in items)
    return [counts.get(label, 0) / len(items) for label in LABELS]


def mean_offset(stats: ItemStats, items: Sequence[Item], user_id: str) -> tuple[float, int]:
    """The mean of (rating - item mean) over the items with a known mean, and how many there were."""
    offsets = []
    for item in items:
        mean, count, _, _ = stats.lookup(str(item["item_id"]), user_id)
        if count:
            offsets.append(float(item["rating"]) - mean)
    return _mean(offsets), len(offsets)


class MissingColumnTolerantTrees(HistGradientBoostingClassifier):
    """scikit-learn's HistGradientBoostingClassifier, fitting also when a column is missing (NaN) in every row.

    scikit-learn 1.9's binning fails on such a column ("window shape cannot be larger than input array shape"),
    and a small training set or one cross-validation fold can hold one: the reader's stated mean when a fold's
    profiles are all empty. The column carries nothing to learn from, so it is 0 for the fit and for every
    prediction of this fit (which all pass through ``_raw_predict``); NaN in other columns keeps its meaning.
    """

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Self:
        """Remember the columns missing in every row of ``X``, then fit with them set to 0."""
        self.all_missing_ = np.isnan(np.asarray(X, dtype=float)).all(axis=0)
        return super().fit(self._filled(X), y, sample_weight)

    def _filled(self, X: Any) -> np.ndarray:
        filled = np.array(X, dtype=float)
        filled[:, self.all_missing_] = 0.0
        return filled

    def _raw_predict(self, X: Any, n_threads: int | None = None) -> np.ndarray:
        return super()._raw_predict(self._filled(X), n_threads)


@dataclass
class TabularFeatures:
    """Turns (user, recent window, target, older history) into one row of numbers; fixed at fit time."""

    recent_len: int
    stats: ItemStats
    attributes: list[str]
    rating_values: list[float]
    with_oracle: bool

    @classmethod
    def fit(cls, train_cases: Sequence[RecCase], stats_samples: pd.DataFrame, with_oracle: bool,
            n_attributes: int) -> TabularFeatures:
        """Window length from the training cases; statistics, attribute vocabulary and rating values from
        the statistics users."""
        attributes: Counter[str] = Counter()
        values: set[float] = set()
        for sample in stats_samples.to_dict("records"):
            for item in [*sample["older"], *sample["recent"], sample["target"]]:
                attributes.update(attribute_list(item.get("attributes")))
                values.add(float(item["rating"]))
        top = [name for name, _ in sorted(attributes.items(), key=lambda kv: (-kv[1], kv[0]))[:n_attributes]]
        ratings = sorted(values, reverse=True) if len(values) <= MAX_RATING_VALUES else []
        recent_len = max((len(c.recent) for c in train_cases), default=0)
        return cls(recent_len, ItemStats.from_samples(stats_samples), top, ratings, with_oracle)

    @property
    def names(self) -> list[str]:
        """Feature names, in column order."""
        names = [f"recent_rating_{i + 1}" for i in range(self.recent_len)]
        names += ["recent_n", "recent_mean", "recent_std", *(f"recent_share_{label}" for label in LABELS)]
        names += ["recent_genre_n", "recent_genre_mean", "recent_offset", "recent_offset_n"]
        names += ["item_mean", "item_count", "item_like_share", "item_dislike_share", "item_mean_plus_recent_offset"]
        names += ["target_n_genres", *(f"target_genre={name}" for name in self.attributes)]
        if self.with_oracle:
            names += ["older_n", "older_mean", "older_std", *(f"older_share_{label}" for label in LABELS)]
            names += [f"older_hist_{value:g}" for value in self.rating_values]
            names += ["older_genre_mean", "older_genre_n", "older_genre_share", "older_genre_minus_mean"]
            names += ["older_offset", "older_offset_n", "item_mean_plus_older_offset"]
        return names

    def row(self, user_id: str, recent: Sequence[Item], target: Item, older: Sequence[Item] | None) -> list[float]:
        """The features of one case; ``older`` (the history the oracle reads) is required with the oracle."""
        user_id = str(user_id)
        target_genres = set(attribute_list(target.get("attributes")))
        window = list(recent)[-self.recent_len :] if self.recent_len else []
        ratings = _ratings(window)
        newest_first = list(ratings[::-1]) + [math.nan] * (self.recent_len - len(window))
        in_genre = [float(i["rating"]) for i in window if target_genres & set(attribute_list(i.get("attributes")))]
        recent_offset, recent_offset_n = mean_offset(self.stats, window, user_id)
        item_mean, item_count, like_share, dislike_share = self.stats.lookup(str(target["item_id"]), user_id)
        row = [*newest_first, len(window), _mean(ratings), _std(ratings), *_label_shares(window)]
        row += [len(in_genre), _mean(in_genre), recent_offset, recent_offset_n]
        row += [item_mean, item_count, like_share, dislike_share, item_mean + recent_offset]
        row += [len(target_genres), *(float(name in target_genres) for name in self.attributes)]
        if self.with_oracle:
            if older is None:
                raise ValueError(f"user {user_id}: the oracle features need the older history")
            row += self.oracle_row(user_id, older, target_genres, item_mean)
        return row

    def oracle_row(self, user_id: str, older: Sequence[Item], target_genres: set[str], item_mean: float) -> list[float]:
        """The numbers behind the user facts, from the older history alone (and the training item means)."""
        ratings = _ratings(older)
        mean = _mean(ratings)
        histogram = Counter(ratings.tolist())
        per_genre: dict[str, list[float]] = {}
        n_in_genre = 0
        for item in older:
            shared = target_genres & set(attribute_list(item.get("attributes")))
            n_in_genre += bool(shared)
            for name in shared:
                per_genre.setdefault(name, []).append(float(item["rating"]))
        genre_mean = _mean([_mean(r) for r in per_genre.values()])
        offset, offset_n = mean_offset(self.stats, older, user_id)
        row = [len(older), mean, _std(ratings), *_label_shares(older)]
        row += [histogram.get(value, 0) / len(older) if older else math.nan for value in self.rating_values]
        row += [genre_mean, n_in_genre, n_in_genre / len(older) if older else math.nan, genre_mean - mean]
        row += [offset, offset_n, item_mean + offset]
        return row


class TabularRecommender:
    """f_Rec as gradient-boosted trees over numbers of the window and the target, tuned by user-grouped CV.

    `fit(train_samples, item_stats_samples)` trains on the training users' samples (``n_targets`` cases
    each: the real target, then each recent item in turn) with item statistics from the users of
    ``item_stats_samples`` (the training splits; a ``test`` split there is an error); `fit_cases` trains on
    given cases instead (stage train_rec's, for a subclass that reads the profile). `predict`
    scores the real target of each sample of a DataFrame, or a sequence of :class:`RecCase` (the
    Recommender protocol; with the oracle, first `attach_histories` the samples the cases come from).
    The profile text of a case is ignored (a subclass may read it: `ReaderRecommender`). ``n_threads`` caps
    the OpenMP threads of each fit (None: all cores); one thread per fit is the fastest on a few shared
    cores. `save`/`load` pickle it.
    """

    def __init__(
        self,
        name: str = "tabular",
        with_oracle: bool = False,
        history_len: int | None = None,
        n_targets: int = 4,
        cv_folds: int = 3,
        grid: Mapping[str, Sequence[Any]] | None = None,
        scoring: str = "accuracy",
        class_weight: str | None = None,
        n_attributes: int = 20,
        early_stopping_rounds: int = 20,
        n_threads: int | None = 1,
        seed: int = 0,
    ) -> None:
        if n_targets < 1 or cv_folds < 2:
            raise ValueError(f"n_targets={n_targets} must be at least 1 and cv_folds={cv_folds} at least 2")
        if history_len is not None and history_len < 1:
            raise ValueError(f"history_len must be at least 1 or null, got {history_len}")
        self.name = name
        self.with_oracle = bool(with_oracle)
        self.history_len = None if history_len is None else int(history_len)
        self.n_targets = int(n_targets)
        self.cv_folds = int(cv_folds)
        self.grid = {str(k): list(v) for k, v in (DEFAULT_GRID if grid is None else grid).items()}
        if not self.grid or any(not values for values in self.grid.values()):
            raise ValueError(f"the grid needs at least one value per setting, got {self.grid}")
        self.scoring = scoring
        self.class_weight = class_weight
        self.n_attributes = int(n_attributes)
        self.early_stopping_rounds = int(early_stopping_rounds)
        self.n_threads = None if n_threads is None else int(n_threads)
        self.seed = int(seed)
        self.features_: TabularFeatures | None = None
        self.search_: GridSearchCV | None = None
        self.model_: HistGradientBoostingClassifier | None = None
        self.best_params_: dict[str, Any] = {}
        self.cv_score_: float = math.nan
        self.cv_seconds_: float = math.nan
        self._histories: dict[str, list[dict[str, Any]]] = {}

    # --- the older history the oracle reads ----------------------------------------------------------

    def history(self, sample: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The older items the oracle reads: the last ``history_len`` of ``older`` (all of them when null)."""
        older = list(sample["older"])
        items = older if self.history_len is None else older_history(sample, self.history_len)
        return [plain_item(i) for i in items]

    def attach_histories(self, samples: pd.DataFrame) -> None:
        """Remember the older history of each sample's user, for `predict` over cases with the oracle."""
        for sample in samples.to_dict("records"):
            self._histories[str(sample["user_id"])] = self.history(sample)

    # --- training ------------------------------------------------------------------------------------

    def training_cases(self, samples: pd.DataFrame) -> list[tuple[RecCase, list[dict[str, Any]] | None]]:
        """Each sample's ``n_targets`` shifted cases, each with the older history (None without the oracle)."""
        out = []
        for sample in samples.to_dict("records"):
            older = self.history(sample) if self.with_oracle else None
            out += [(case, older) for case in shifted_cases(sample, "", self.n_targets)]
        return out

    def matrix(self, cases: Sequence[tuple[RecCase, Sequence[Item] | None]]) -> np.ndarray:
        """The feature matrix of (case, older history) pairs."""
        features = self._features()
        rows = [features.row(c.user_id, c.recent, c.target, older) for c, older in cases]
        return np.asarray(rows, dtype=float).reshape(len(rows), len(features.names))

    def fit(self, train_samples: pd.DataFrame, item_stats_samples: pd.DataFrame) -> Self:
        """Grid-search the classifier over user-grouped folds of the training cases, then refit on all of them."""
        refuse_held_out("train_samples", train_samples)
        if train_samples.empty:
            raise ValueError("no training samples")
        return self.fit_pairs(self.training_cases(train_samples), item_stats_samples)

    def fit_cases(self, cases: Sequence[RecCase], item_stats_samples: pd.DataFrame) -> Self:
        """`fit` on the given cases, profiles as they are (with the oracle, `attach_histories` of their users first)."""
        return self.fit_pairs([(case, self._case_history(case)) for case in cases], item_stats_samples)

    def fit_pairs(self, pairs: Sequence[tuple[RecCase, Sequence[Item] | None]],
                  item_stats_samples: pd.DataFrame) -> Self:
        """`fit` on (case, older history) pairs, with item statistics from ``item_stats_samples``."""
        refuse_held_out("item_stats_samples", item_stats_samples)
        self.features_ = TabularFeatures.fit([c for c, _ in pairs], item_stats_samples, self.with_oracle,
                                             self.n_attributes)
        x = self.matrix(pairs)
        y = np.fromiter((LABEL_INDEX[c.label] for c, _ in pairs), dtype=np.int64, count=len(pairs))
        groups = np.asarray([c.user_id for c, _ in pairs])
        n_users = len(set(groups.tolist()))
        if n_users < 2:
            raise ValueError(f"user-grouped cross-validation needs at least 2 training users, got {n_users}")
        # Early stopping holds out 10% of the cases, stratified: it needs at least one case per label there.
        early_stopping = len(y) * 0.1 >= 2 * len(LABELS)
        estimator = MissingColumnTolerantTrees(
            early_stopping=early_stopping, validation_fraction=0.1, n_iter_no_change=self.early_stopping_rounds,
            class_weight=self.class_weight, random_state=self.seed,
        )
        self.search_ = GridSearchCV(estimator, self.grid, scoring=self.scoring,
                                    cv=GroupKFold(n_splits=min(self.cv_folds, n_users)), refit=True, n_jobs=1)
        start = time.perf_counter()
        with threadpool_limits(limits=self.n_threads, user_api="openmp"):
            self.search_.fit(x, y, groups=groups)
        self.cv_seconds_ = time.perf_counter() - start
        self.model_ = self.search_.best_estimator_
        self.best_params_ = dict(self.search_.best_params_)
        self.cv_score_ = float(self.search_.best_score_)
        log.info("%s: %d cases of %d users, %d features; CV %s %.3f with %s in %.1fs", self.name, len(pairs), n_users,
                 x.shape[1], self.scoring, self.cv_score_, self.best_params_, self.cv_seconds_)
        return self

    # --- prediction ----------------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        """Whether `fit` has run."""
        return self.model_ is not None

    @property
    def feature_names(self) -> list[str]:
        """The names of the columns of `matrix`, in order."""
        return self._features().names

    def _features(self) -> TabularFeatures:
        if self.features_ is None:
            raise RuntimeError(f"{self.name} is not fitted: call fit(train_samples, item_stats_samples) first")
        return self.features_

    def sample_cases(self, samples: pd.DataFrame) -> list[tuple[RecCase, list[dict[str, Any]] | None]]:
        """The real-target case of each sample, with its older history when the oracle reads it."""
        records = samples.to_dict("records")
        return [(case_from_sample(s), self.history(s) if self.with_oracle else None) for s in records]

    def predict(self, samples: pd.DataFrame | Sequence[RecCase]) -> np.ndarray:
        """Probabilities (n, 3) in LABELS order: of each sample's real target, or of each case."""
        if isinstance(samples, pd.DataFrame):
            pairs = self.sample_cases(samples)
        else:
            pairs = [(case, self._case_history(case)) for case in samples]
        if self.model_ is None:
            self._features()  # raises: not fitted
        assert self.model_ is not None
        out = np.zeros((len(pairs), len(LABELS)))
        if pairs:
            with threadpool_limits(limits=self.n_threads, user_api="openmp"):
                out[:, self.model_.classes_] = self.model_.predict_proba(self.matrix(pairs))
        return out

    def _case_history(self, case: RecCase) -> list[dict[str, Any]] | None:
        if not self.with_oracle:
            return None
        if case.user_id not in self._histories:
            raise KeyError(f"user {case.user_id}: no older history attached (call attach_histories(samples))")
        return self._histories[case.user_id]

    def feature_frame(self, samples: pd.DataFrame) -> pd.DataFrame:
        """The features of each sample's real target, one named column per feature (for inspection and tests)."""
        return pd.DataFrame(self.matrix(self.sample_cases(samples)), columns=self.feature_names,
                            index=samples.index)

    # --- persistence ---------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Pickle the fitted model (features, statistics, classifier) to ``path``."""
        self._features()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with Path(path).open("wb") as handle:
            pickle.dump(self, handle)

    @classmethod
    def load(cls, path: Path) -> Self:
        """A model written by `save` (of this class or a subclass)."""
        with Path(path).open("rb") as handle:
            model = pickle.load(handle)
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model
