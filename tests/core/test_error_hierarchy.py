"""csr_vdb.errors: one hierarchy, a distinct exit code per class, rows named in one line (CLI exit codes: tests/cli)."""

from __future__ import annotations

import pytest

from csr_vdb import errors
from csr_vdb.errors import CollectionNotFoundError, CSRVDBError, DataError, StoreError, describe_rows

CLASSES = [CSRVDBError, errors.ConfigError, DataError, errors.ModelError, StoreError, CollectionNotFoundError,
           errors.MigrationError, errors.VerificationError]


def test_every_class_has_its_own_exit_code_as_documented():
    codes = {cls.__name__: cls.exit_code for cls in CLASSES}
    assert codes == {
        "CSRVDBError": 1, "ConfigError": 2, "DataError": 3, "ModelError": 4, "StoreError": 5,
        "CollectionNotFoundError": 6, "MigrationError": 7, "VerificationError": 8,
    }
    for cls in CLASSES:
        assert f"{cls.__name__}" in errors.__doc__ and f"(exit {cls.exit_code})" in errors.__doc__
        assert cls.__doc__ and "\n" not in cls.__doc__.strip()  # a one-line docstring


def test_hierarchy():
    for cls in CLASSES[1:]:
        assert issubclass(cls, CSRVDBError)
    assert issubclass(CollectionNotFoundError, StoreError)
    with pytest.raises(StoreError):
        raise CollectionNotFoundError("no collection 'docs'")


def test_data_error_keeps_the_rows():
    err = DataError("NaN at rows 3, 9", [3, 9])
    assert str(err) == "NaN at rows 3, 9" and err.rows == [3, 9] and err.exit_code == 3
    assert DataError("empty").rows == []


def test_describe_rows_shows_a_few_then_counts_the_rest():
    assert describe_rows([3, 17, 42]) == "3, 17, 42"
    assert describe_rows(list(range(8))) == "0, 1, 2, 3, 4 (+3 more)"
    assert describe_rows(["a", "b", "c"], limit=2) == "a, b (+1 more)"
    assert describe_rows([]) == ""
