"""Typed configuration: one YAML file holds every hyperparameter of a run.

Unknown keys are errors (a typo must not silently fall back to a default), and the defaults
are the ones that do well on MovieLens, so an empty file is a good configuration.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(_Strict):
    """How held-out interactions are chosen."""

    # temporal: each user's most recent interactions are held out (production predicts the
    # future); stratified: a per-user random fraction (the Microsoft Recommenders protocol).
    method: Literal["temporal", "stratified"] = "temporal"
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    # The slice of training data held out once more to fit the ranker and tune on.
    validation_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    min_user_interactions: int = Field(3, ge=2)
    seed: int = 42


class _ItemItemConfig(_Strict):
    """What both EASE models share: a dense item-item matrix and its limits."""

    enabled: bool = True
    l2: float = Field(400.0, gt=0.0)
    # A dense item-item Gram matrix costs 8*n^2 bytes and O(n^3) time to invert: beyond this
    # catalogue size the model is skipped with a message rather than exhausting memory.
    max_items: int = Field(25_000, ge=1)
    # Items with fewer training interactions than this get no weights (0 score): they carry
    # almost no co-occurrence signal, and dropping them shrinks the O(n^3) inverse.
    min_item_support: int = Field(3, ge=1)


class EaseConfig(_ItemItemConfig):
    # Denoising dropout rate p: adds p/(1-p)·count to each item's diagonal (0: plain EASE).
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class SeqEaseConfig(_ItemItemConfig):
    """EASE on co-occurrence weighted by closeness in each user's time-ordered history."""

    l2: float = Field(200.0, gt=0.0)
    # A pair of items d interactions apart in a user's history counts exp(-d / length_scale).
    length_scale: float = Field(30.0, gt=0.0)
    # Pairs further apart than this count nothing; fitting costs O(interactions x window).
    window: int = Field(60, ge=1)


class AlsConfig(_Strict):
    enabled: bool = True
    factors: int = Field(20, ge=1)
    regularization: float = Field(0.1, ge=0.0)
    iterations: int = Field(20, ge=1)
    alpha: float = Field(2.0, gt=0.0)


class ContentConfig(_Strict):
    enabled: bool = True
    max_features: int = Field(20_000, ge=1)
    # Weight of the title words against genres in the item text.
    title_weight: float = Field(1.0, ge=0.0)


class RankerConfig(_Strict):
    enabled: bool = True
    # LightGBM's listwise ranking objectives. rank_xendcg (cross-entropy NDCG, Bruch 2021) is
    # the default: with labels as noisy as held-out interactions it beat lambdarank on
    # MovieLens 100K (NDCG@10 0.501 against 0.497, mean of five splits; measured with the
    # package's earlier per-user split rounding, not re-measured on the reference split).
    objective: Literal["rank_xendcg", "lambdarank"] = "rank_xendcg"
    candidates_per_generator: int = Field(50, ge=1)
    # Cross-fitting folds for the ranker's training labels (stratified splits; temporal splits
    # use one most-recent slice).
    folds: int = Field(5, ge=1, le=20)
    n_estimators: int = Field(150, ge=1)
    learning_rate: float = Field(0.05, gt=0.0)
    num_leaves: int = Field(15, ge=2)
    min_child_samples: int = Field(50, ge=1)
    # The ranker's tree count is the best on its validation users over all `n_estimators`
    # rounds (None), or, with a number, the best before that many rounds without a gain. On
    # 25M synthetic interactions a 30-round patience once stopped at 27 trees, where the
    # ranker only ties sequence EASE against the truth (50 trees: +0.005, 100: +0.011);
    # the validation curve there still rises at 150 (the best round of all: 0.8749 against
    # sequence EASE's 0.8618). On MovieLens 100K the two choices score
    # the same over five splits (NDCG@10 0.4973 against 0.4974). The Dask path chooses the same way.
    early_stopping_rounds: int | None = Field(None, ge=1)
    # Once the validation curve has chosen the number of trees on a fifth of the users, train that many
    # on all users. One more LightGBM run (about a third more ranker time); on MovieLens 100K it
    # lifted NDCG@10 by 0.0018 on average over five splits and by 0.0012 over three other draws
    # (earlier split rounding, as above).
    refit_on_all_users: bool = True
    # The cut-off of the NDCG@k that chooses the ranker's tree count (and LambdaRank optimises).
    eval_at: int = Field(10, ge=1)


class ScaleConfig(_Strict):
    """Where the fit stops scoring every user against the whole catalogue (see
    components/models/retrieval.py). At or below `large_catalogue_items` nothing here applies
    and the models are exact; above it, the generators retrieve candidates instead."""

    # Above this many items: ALS and content by exact FAISS inner-product search, EASE and
    # sequence EASE solved on the `item_item_items` most-supported items with each item's
    # `neighbours` largest weights kept (sparse), ranker features from the candidate lists.
    # 10,000: on 1M synthetic interactions (12,485 items) the retrieval path fitted in 0.56x
    # the exact path's time and 0.26x its peak memory, with a 24 MB artifact instead of 1.1 GB,
    # and scored truth NDCG@10 0.799 against the exact path's 0.785 (one seed; bench_scale.py,
    # test_exact_against_retrieval_on_one_data_set).
    large_catalogue_items: int = Field(10_000, ge=1)
    # The item-item models' dense solve is O(n^3): 8,000 items hold 98% of the interactions
    # of MovieLens-25M-shaped data; the rest are proposed by ALS, whose factors cover every item.
    item_item_items: int = Field(8_000, ge=2)
    neighbours: int = Field(200, ge=1)
    # LSA dimensions of the content model's TF-IDF vectors above the threshold.
    content_dimensions: int = Field(64, ge=2)
    # The ranker learns from at most this many users' candidates (a seeded sample): its cost
    # stops growing with the data (any size).
    ranker_max_users: int = Field(40_000, ge=2)


class ModelConfig(_Strict):
    ease: EaseConfig = EaseConfig()
    seq_ease: SeqEaseConfig = SeqEaseConfig()
    als: AlsConfig = AlsConfig()
    content: ContentConfig = ContentConfig()
    ranker: RankerConfig = RankerConfig()
    scale: ScaleConfig = ScaleConfig()
    # Interactions below this rating are not positive feedback (None: every interaction is).
    positive_rating_threshold: float | None = None
    seed: int = 42


class EvaluationConfig(_Strict):
    k_values: tuple[int, ...] = (5, 10, 20)

    @model_validator(mode="after")
    def _positive_k(self) -> EvaluationConfig:
        if not self.k_values or min(self.k_values) < 1:
            raise ValueError("k_values must be a non-empty list of positive integers")
        return self


class GateConfig(_Strict):
    """Champion-challenger gate: when may a new model replace the one that serves."""

    primary_metric: str = "ndcg@10"
    # Relative gain over the champion that the primary metric must reach.
    min_relative_gain: float = Field(0.01, ge=0.0)
    # Metric -> largest tolerated relative drop against the champion.
    guardrails: dict[str, float] = {"recall@10": 0.02, "coverage@10": 0.10}


class RegistryConfig(_Strict):
    model_name: str = "recsys"
    experiment: str = "recsys"


class OnlineGuardrailConfig(_Strict):
    """What the challenger may not make worse while it serves, whatever its primary metric."""

    # Largest tolerated rise of the share of failed requests (absolute: 0.01 = one point).
    max_error_rate_increase: float = Field(0.01, ge=0.0)
    # The challenger's p99 latency may be at most this multiple of the champion's, plus
    # `latency_slack_ms` (a model that does more work than a popularity list may take some
    # milliseconds more; that is not what this guardrail is for), and never above
    # `max_p99_latency_ms` (the p99 the serving alerts fire on).
    max_p99_latency_ratio: float = Field(1.5, ge=1.0)
    latency_slack_ms: float = Field(50.0, ge=0.0)
    max_p99_latency_ms: float = Field(250.0, gt=0.0)
    # The like rate is breached when its always-valid interval lies wholly below this relative
    # drop (0.1: the challenger's like rate is surely more than 10% under the champion's).
    max_like_rate_drop: float = Field(0.1, ge=0.0, lt=1.0)
    # Serving guardrails are judged once each version answered this many requests.
    min_requests: int = Field(200, ge=1)


class ExperimentConfig(_Strict):
    """The online champion-challenger experiment (`recsys rollout analyze`, `recsys serve`)."""

    # ctr: clicks per impression at positions < k; like_rate: likes per impression.
    primary_metric: Literal["ctr", "like_rate"] = "ctr"
    k: int = Field(10, ge=1)
    # "ab": the champion's users against the challenger's; "interleaving": team-draft credit
    # within interleaved answers.
    method: Literal["ab", "interleaving"] = "ab"
    alpha: float = Field(0.05, gt=0.0, lt=0.5)
    power: float = Field(0.8, gt=0.0, lt=1.0)
    # Relative lift of the primary metric that the minimum sample size is powered to detect.
    min_detectable_effect: float = Field(0.10, gt=0.0)
    # Standard deviation of the mSPRT's normal mixture over the effect (absolute difference of
    # rates); None: min_detectable_effect x the champion's rate.
    mixture_sd: float | None = Field(None, gt=0.0)
    # With no significant difference once each arm holds this many times the minimum sample
    # size, the experiment stops and the champion stays.
    max_sample_factor: float = Field(4.0, ge=1.0)
    # Interleaving: the challenger's share of decided requests (wins / (wins + losses)) the
    # minimum sample size is powered for, and the spread of the test's Beta mixture around 1/2.
    interleaving_min_win_rate: float = Field(0.55, gt=0.5, lt=1.0)
    interleaving_mixture_sd: float = Field(0.05, gt=0.0, lt=0.5)
    # Local serving: share of users (by a hash of the user id) answered by the challenger, and
    # share whose answers interleave both models.
    challenger_percent: float = Field(10.0, ge=0.0, le=100.0)
    interleave_percent: float = Field(0.0, ge=0.0, le=100.0)
    # keep: every impression counts for the version that answered it (KServe splits requests,
    # so a user may see both); drop: only users who saw one version (biased when the split is
    # uneven, see components/experiments/experiment.py).
    mixed_users: Literal["keep", "drop"] = "keep"
    guardrails: OnlineGuardrailConfig = OnlineGuardrailConfig()

    @model_validator(mode="after")
    def _shares(self) -> ExperimentConfig:
        if self.challenger_percent + self.interleave_percent > 100.0:
            raise ValueError("challenger_percent + interleave_percent must not exceed 100")
        return self


class MonitoringConfig(_Strict):
    """Drift checks and the retraining decision (`recsys monitor`, the monitoring pipeline)."""

    # Significance of one whole check: split evenly over the detectors (requests, scores, events,
    # ratings), and within each over its features. On the default data's stationary 1,000-row
    # windows 0.05 raised 2.5 % false alarms and 0.01 none of 200 (`make bench`): 0.01, so an
    # hourly check seldom retrains on noise, while every planted shift is still caught.
    p_value: float = Field(0.01, gt=0.0, lt=1.0)
    correction: Literal["bonferroni", "fdr"] = "bonferroni"
    # A check reads the most recent `window_size` served rows and events of the last
    # `window_hours`; a view with fewer than `min_window` rows is reported, not tested.
    window_hours: float = Field(24.0, gt=0.0)
    window_size: int = Field(1_000, ge=1)
    min_window: int = Field(200, ge=1)
    # Reference rows kept per view at training time (drawn from the held-out interactions).
    reference_size: int = Field(20_000, ge=100)
    # Quantile buckets of user activity and item popularity.
    buckets: int = Field(5, ge=2, le=20)
    # Retrain when the champion is older than this...
    max_model_age_days: float = Field(30.0, gt=0.0)
    # ...or when new feedback interactions reach this share of its training interactions...
    new_data_fraction: float = Field(0.1, gt=0.0)
    # ...or when its click-through rate fell by more than this share against the window before
    # (one-sided two-proportion test at p_value, with at least min_impressions in each window).
    max_ctr_drop: float = Field(0.2, gt=0.0, lt=1.0)
    min_impressions: int = Field(1_000, ge=1)
    # Features reported but left out of the decision (e.g. "requests.k" when clients vary k).
    ignore_features: tuple[str, ...] = ()


class Config(_Strict):
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    gate: GateConfig = GateConfig()
    registry: RegistryConfig = RegistryConfig()
    experiment: ExperimentConfig = ExperimentConfig()
    monitoring: MonitoringConfig = MonitoringConfig()


def load_config(path: str | Path | None = None) -> Config:
    """Read a YAML config (None: the defaults). Any problem is one ConfigError line."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: dict[str, Any], *, source: str = "config") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None


def config_to_dict(config: Config) -> dict[str, Any]:
    return config.model_dump(mode="json")
