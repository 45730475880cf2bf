"""MLflow lineage of a training source, the `mlflow.data` way: a `MetaDataset` (metadata only,
nothing downloaded again) whose source is the URL and whose digest is the source fingerprint,
logged as the run's `training` input.

S3 URLs and local files resolve to MLflow's own dataset sources (`S3ArtifactDatasetSource`,
`LocalArtifactDatasetSource`), so `mlflow.data.get_source(...)` can load them back; SQL, DVC and
the built-in datasets have no MLflow source type, so `SourceUrl` records their URL.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Dataset, DatasetInput, InputTag

from components.data.sources import is_remote, open_source


class SourceUrl(DatasetSource):
    """A data source MLflow has no type for (SQL, DVC, built-in), known by its URL."""

    def __init__(self, url: str):
        self.url = url

    @staticmethod
    def _get_source_type() -> str:
        return "recsys_url"

    def load(self, **kwargs) -> Any:
        raise NotImplementedError("read it with components.data.ingest.read_raw(url)")

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> SourceUrl:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> SourceUrl:
        return cls(source_dict["url"])


def _artifact_source(url: str) -> DatasetSource:
    """MLflow's own source for an artifact-store URL (S3, a local path)."""
    with warnings.catch_warnings():  # a local path "can be interpreted in multiple ways"
        warnings.simplefilter("ignore", UserWarning)
        return resolve_dataset_source(url)


def training_input(
    source: str, items: str, *, source_fingerprint: str, data_fingerprint: str
) -> DatasetInput:
    """The `mlflow.entities.DatasetInput` to log on the run that trained on `source`."""
    if is_remote(source):
        remote = open_source(source)
        url, name = remote.url, remote.name
        origin = _artifact_source(url) if url.startswith("s3://") else SourceUrl(url)
    elif Path(source).exists():
        url, name = str(Path(source).resolve()), Path(source).stem
        origin = _artifact_source(url)
    else:
        url = name = source
        origin = SourceUrl(url)
    described = MetaDataset(origin, name=name, digest=source_fingerprint).to_dict()
    entity = Dataset(
        name=described["name"], digest=described["digest"],
        source_type=described["source_type"], source=described["source"],
    )
    tags = [InputTag("mlflow.data.context", "training"), InputTag("data_fingerprint", data_fingerprint)]
    if items:
        tags.append(InputTag("items", open_source(items).url if is_remote(items) else items))
    return DatasetInput(entity, tags)
