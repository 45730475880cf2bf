"""Data whose columns are named otherwise: the `--columns` mapping, and the hints that the
validation error gives (a MovieLens u.data passed as a file, columns that look renamed)."""
from __future__ import annotations

import pandas as pd
import pytest

from components.data.ingest import load_dataset, parse_columns
from components.errors import DataValidationError


def _ml100k_file(folder):
    folder.mkdir()
    data = folder / "u.data"
    data.write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n")
    return data


def test_u_data_given_as_a_file_suggests_its_directory(tmp_path):
    data = _ml100k_file(tmp_path / "ml-100k")
    with pytest.raises(DataValidationError) as raised:
        load_dataset(str(data))
    message = str(raised.value)
    assert "missing required column(s) user_id, item_id" in message
    assert "looks like MovieLens 100K's u.data" in message and f"({tmp_path / 'ml-100k'})" in message
    # What it suggests works.
    assert len(load_dataset(str(tmp_path / "ml-100k")).interactions) == 3


def test_renamed_columns_get_the_mapping_to_pass(tmp_path):
    path = tmp_path / "ratings.csv"
    pd.DataFrame({"userId": [1, 2, 2], "movieId": [10, 10, 11], "rating": [4.0, 3.0, 5.0],
                  "ts": [1_600_000_000, 1_600_000_100, 1_600_000_200]}).to_csv(path, index=False)
    with pytest.raises(DataValidationError) as raised:
        load_dataset(str(path))
    message = str(raised.value)
    assert "'userId' looks like user_id, 'movieId' looks like item_id, 'ts' looks like timestamp" in message
    assert message.endswith("pass --columns user=userId,item=movieId,timestamp=ts")
    # The mapping it names loads the file, timestamps included.
    data = load_dataset(str(path), columns=parse_columns("user=userId,item=movieId,timestamp=ts"))
    assert list(data.interactions.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert data.interactions["user_id"].tolist() == ["1", "2", "2"]


@pytest.mark.parametrize("name", ["user_ID", "UserID", "user-id", "USER"])
def test_spellings_of_user_id_are_recognised(tmp_path, name):
    path = tmp_path / "events.csv"
    pd.DataFrame({name: ["a"], "item_id": ["x"]}).to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=f"pass --columns user={name}$"):
        load_dataset(str(path))


def test_no_hint_for_columns_that_mean_nothing(tmp_path):
    path = tmp_path / "other.csv"
    pd.DataFrame({"a": [1], "b": [2]}).to_csv(path, index=False)
    with pytest.raises(DataValidationError) as raised:
        load_dataset(str(path))
    assert str(raised.value).endswith("(found: a, b)")


def test_mapped_ids_keep_leading_zeros(tmp_path):
    path = tmp_path / "plays.csv"
    path.write_text("listener,artist\n007,0042\n007,0043\n")
    data = load_dataset(str(path), columns=parse_columns("user=listener,item=artist"))
    assert data.interactions["user_id"].tolist() == ["007", "007"]
    assert data.interactions["item_id"].tolist() == ["0042", "0043"]


@pytest.mark.parametrize("text, fragment", [
    ("user", "expected KEY=COLUMN pairs"),
    ("person=userId", "not 'person=userId'"),
    ("user=a,user=b", "mapped twice"),
])
def test_a_malformed_mapping_is_one_line(text, fragment):
    with pytest.raises(DataValidationError, match=fragment):
        parse_columns(text)


def test_a_mapping_to_a_column_the_data_lacks_or_already_has(tmp_path):
    path = tmp_path / "r.csv"
    pd.DataFrame({"user_id": ["a"], "movieId": ["x"], "item_id": ["y"]}).to_csv(path, index=False)
    with pytest.raises(DataValidationError, match="--columns names userId, which the data does not have"):
        load_dataset(str(path), columns=parse_columns("user=userId"))
    with pytest.raises(DataValidationError, match="maps another column to item_id, which the data already has"):
        load_dataset(str(path), columns=parse_columns("item=movieId"))


def test_the_pipeline_steps_take_the_mapping(tmp_path):
    """`recsys run --columns` reaches the pipeline's fingerprint and ingest steps: the renamed
    file validates, and the mapping is part of the fingerprint that caching follows."""
    from components.steps import fingerprint_source, ingest, validate

    path = tmp_path / "ratings.csv"
    pd.DataFrame({"userId": ["1", "2"], "movieId": ["10", "11"]}).to_csv(path, index=False)
    mapping = "user=userId,item=movieId"
    assert fingerprint_source(str(path), "", columns=mapping) != fingerprint_source(str(path), "")
    raw, items = tmp_path / "raw.parquet", tmp_path / "items.parquet"
    info = ingest(str(path), "", str(raw), str(items), columns=mapping)
    validate(str(raw), str(items), str(tmp_path / "v.parquet"), str(tmp_path / "vi.parquet"), **info)
    assert pd.read_parquet(tmp_path / "v.parquet")["item_id"].tolist() == ["10", "11"]
    with pytest.raises(DataValidationError, match="expected KEY=COLUMN"):
        fingerprint_source(str(path), "", columns="user")


def test_both_pipelines_take_columns():
    import yaml

    from pipelines.monitoring import COMPILED_PATH as MONITORING
    from pipelines.pipeline import COMPILED_PATH as TRAINING

    for path in (TRAINING, MONITORING):
        spec = next(yaml.safe_load_all(path.read_text()))
        assert spec["root"]["inputDefinitions"]["parameters"]["columns"]["defaultValue"] == ""


def test_recsys_run_refuses_a_malformed_mapping_before_running(tmp_path, capfd):
    from pipelines.cli.main import main

    assert main(["run", "--columns", "person=userId", "--home", str(tmp_path / "home")]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("recsys run: error: --columns person=userId: expected KEY=COLUMN")
    assert not (tmp_path / "home").exists()
