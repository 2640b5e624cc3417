import pytest

from tests.dags.airflow_child import migrate


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory):
    """One `airflow db migrate` for every test here that runs dag.test()."""
    return migrate(tmp_path_factory.mktemp("migrated"))
