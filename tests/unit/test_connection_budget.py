"""The connection budget's settings: ACGS_DB_POOL_MIN/MAX size the server's one pool."""

from __future__ import annotations

import pytest
from acgs.config import Settings
from acgs.errors import ConfigurationError
from acgs.lifecycle.database import shared_pool


def test_one_pool_of_one_to_eight_by_default_and_as_set() -> None:
    default = shared_pool(Settings.from_env({}), "host=127.0.0.1")
    assert (default.min_size, default.max_size) == (1, 8)
    settings = Settings.from_env({"ACGS_DB_POOL_MIN": "0", "ACGS_DB_POOL_MAX": "3"})
    pool = shared_pool(settings, "host=127.0.0.1")
    assert (pool.min_size, pool.max_size) == (0, 3)


@pytest.mark.parametrize(("env", "message"), [
    ({"ACGS_DB_POOL_MAX": "0"}, "ACGS_DB_POOL_MAX=0 is below its minimum 1"),
    ({"ACGS_DB_POOL_MIN": "4", "ACGS_DB_POOL_MAX": "2"},
     "ACGS_DB_POOL_MAX=2 is below ACGS_DB_POOL_MIN=4"),
    ({"ACGS_DB_POOL_MAX": "many"}, "ACGS_DB_POOL_MAX='many' is not an integer"),
])
def test_bad_pool_sizes_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env(env)
