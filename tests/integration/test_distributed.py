"""The distributed fit on a real Dask LocalCluster of two worker processes: the ranker's
examples built by user partition on the workers and LightGBM's DaskLGBMRanker trained there
give the quality of the single-process fit, within the noise of the ranker's own randomness:
on the default data the single-process fit's NDCG@10 has moved by about 0.02 with which users
choose its tree count (model seeds, earlier code), and on the current code it scores 0.158
against the 2-worker fit's 0.157 (`pytest -s` prints both).

The cluster path (the dask-kubernetes operator's DaskCluster created and deleted by the train
step) cannot run here, there is no Kubernetes cluster: its resource is checked offline in
tests/unit/test_dask_cluster.py and its RBAC with the other manifests."""
from __future__ import annotations

from components.config import ModelConfig, RankerConfig, SplitConfig
from components.data.ingest import load_dataset
from components.data.split import split_interactions
from components.evaluation.offline_eval import evaluate_model
from components.models.distributed import dask_client
from components.models.two_stage import TwoStageRecommender

TOLERANCE = 0.025


def _fit_and_score(dataset, workers: int) -> dict[str, dict[str, float]]:
    parts = split_interactions(dataset.interactions, SplitConfig())
    with dask_client(workers) as client:
        model = TwoStageRecommender().fit(parts.train, dataset.items, progress=lambda _: None, client=client)
    return evaluate_model(model, parts.test, k_values=(10,))


def _check(dataset):
    single = _fit_and_score(dataset, 0)
    distributed = _fit_and_score(dataset, 2)
    ndcg = distributed["two_stage"]["ndcg@10"]
    # The README's figures (`pytest -s` shows them).
    print(f"\ntwo-stage NDCG@10: one process {single['two_stage']['ndcg@10']:.4f}, "
          f"2 workers {ndcg:.4f}")
    assert abs(ndcg - single["two_stage"]["ndcg@10"]) <= TOLERANCE, (ndcg, single["two_stage"])
    assert ndcg > distributed["popularity"]["ndcg@10"]


def test_two_workers_match_one_process_on_the_default_data():
    _check(load_dataset())


def test_two_workers_match_one_process_on_movielens_100k(ml100k_dir):
    _check(load_dataset(str(ml100k_dir)))


def test_no_workers_and_no_scheduler_is_the_single_process_fit():
    with dask_client(0) as client:
        assert client is None


def test_a_ranker_worse_than_its_generators_is_not_served_from_workers_either(small_dataset):
    """The guard of the single-process fit, on the workers' validation partitions: a ranker that
    cannot split loses to its generators and the best of them serves alone."""
    unable = ModelConfig(ranker=RankerConfig(n_estimators=1, min_child_samples=1_000_000))
    said: list[str] = []
    with dask_client(2) as client:
        model = TwoStageRecommender(unable).fit(small_dataset.interactions, small_dataset.items,
                                                progress=said.append, client=client)
    assert model.ranker_ is None
    assert model.ranked_by in set(model.generators_) - {"popularity"}
    scores = next(line for line in said if line.startswith("validation ndcg@10: ranker"))
    assert all(name in scores for name in ("ease", "seq_ease", "als"))
    assert any(f"serving {model.ranked_by} alone" in line for line in said)
