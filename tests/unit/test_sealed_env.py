"""The server's environment after sealing: no ACGS_*, no connection variables, no secrets."""

from __future__ import annotations

from acgs.sealed_env import seal_environment

DB = "postgresql://acgs:hunter2@db.internal:5432/acgs"


def test_secrets_are_removed_and_ordinary_variables_kept() -> None:
    env = {
        "ACGS_DATABASE_URL": DB, "ACGS_REDIS_URL": "redis://:pw@r:6379/0",
        "ACGS_TLS_KEY": "/keys/server.key", "ACGS_ENV": "production",
        "PGPASSWORD": "hunter2", "PGHOST": "db", "REDISCLI_AUTH": "pw",
        "AWS_SECRET_ACCESS_KEY": "x", "GITHUB_TOKEN": "ghp_x", "SOME_API_KEY": "k",
        "DB_COPY": f"see {DB}", "MIRROR": "https://user:pass@mirror.example/simple",
        "PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "PYTHONPATH": "/app",
    }
    removed = seal_environment(env, [DB])
    assert env == {"PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "PYTHONPATH": "/app"}
    assert "ACGS_DATABASE_URL" in removed and "DB_COPY" in removed and "MIRROR" in removed


def test_empty_known_values_mark_nothing() -> None:
    env = {"PATH": "/usr/bin"}
    assert seal_environment(env, ["", ""]) == [] and env == {"PATH": "/usr/bin"}
