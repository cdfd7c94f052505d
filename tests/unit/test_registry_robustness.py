"""The registry stays whole: readers during a write, a held lock, a read-only or damaged file.

Each case runs the real CLI against a real SQLite file and checks the one-line message, the
exit code, and that the registry's contents are as they were.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tffprod.cli.main import cli
from tffprod.registry import Registry
from tffprod.registry.connection import BUSY_TIMEOUT_S


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    path = tmp_path / "tffprod.db"
    with Registry.open(path) as registry:
        registry.add_site("hospital-a", address="127.0.0.1:9")
        session = registry.create_session(name="m", spec={"name": "m"}, task={}, backend="local", rounds_planned=3,
                                          datasets=["hospital-a/train:1"])
        registry.start_session(session["id"], coordinator={"host": "elsewhere", "pid": 1})
        registry.record_round(session["id"], round_num=1, metrics={"loss": 1.0}, participants=[], duration_s=0.1,
                              epsilon=None)
    return path


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _contents(path: Path) -> list:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                for table in ("sites", "sessions", "rounds", "audit", "federations")]
    finally:
        conn.close()


@contextlib.contextmanager
def _write_lock(path: Path):
    """Another process's open write transaction (a coordinator committing a round, for instance)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE sites SET info = info WHERE name = 'hospital-a'")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_session_list_and_show_read_while_another_process_writes(registry_file: Path) -> None:
    with _write_lock(registry_file):
        t0 = time.monotonic()
        code, out, _ = _invoke("session", "list", "--registry", str(registry_file), "--json")
        assert code == 0 and '"rounds_completed": 1' in out
        session_id = Registry.open(registry_file).list_sessions()[0]["id"]
        code, out, _ = _invoke("session", "show", session_id, "--registry", str(registry_file))
        assert code == 0 and "round   1" in out
        assert time.monotonic() - t0 < BUSY_TIMEOUT_S  # WAL readers never waited for the writer


def test_a_write_waits_for_a_short_lock_then_succeeds(registry_file: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
         "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(1); c.execute('ROLLBACK')",
         str(registry_file)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = _invoke("federation", "create", "hospitals", "--registry", str(registry_file))
    finally:
        holder.wait(timeout=30)
    assert code == 0, err
    with Registry.open(registry_file) as registry:
        assert [f["name"] for f in registry.list_federations()] == ["hospitals"]


def test_a_lock_held_past_the_busy_timeout_is_a_clear_error_and_changes_nothing(registry_file: Path) -> None:
    before = _contents(registry_file)
    with _write_lock(registry_file):
        code, _, err = _invoke("federation", "create", "hospitals", "--registry", str(registry_file))
    assert code == 5
    assert err.count("\n") == 1 and "database is locked" in err and str(registry_file) in err
    assert _contents(registry_file) == before


def _make_read_only(path: Path) -> None:
    if os.geteuid() != 0:
        path.chmod(0o444)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
        pytest.skip("running as root and the file cannot be made immutable here")


def test_a_read_only_registry_refuses_writes_in_one_line_and_still_reads(registry_file: Path) -> None:
    with Registry.open(registry_file) as registry:  # fold the WAL into the file first
        registry._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = _contents(registry_file)
    _make_read_only(registry_file)
    try:
        code, _, err = _invoke("federation", "create", "hospitals", "--registry", str(registry_file))
        assert code == 5 and err.count("\n") == 1 and "read" in err and str(registry_file) in err
        code, out, err = _invoke("session", "list", "--registry", str(registry_file), "--json")
        assert code == 0 and '"rounds_completed": 1' in out, err
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(registry_file)], check=True)
        registry_file.chmod(0o644)
    assert _contents(registry_file) == before


@pytest.mark.parametrize("damage", ["truncated", "garbage page"])
def test_a_damaged_registry_is_a_clear_error(registry_file: Path, damage: str) -> None:
    with Registry.open(registry_file) as registry:
        registry._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = registry_file.read_bytes()
    if damage == "truncated":
        registry_file.write_bytes(data[:100])
    else:
        registry_file.write_bytes(data[:4096] + os.urandom(len(data) - 4096))
    damaged = registry_file.read_bytes()
    code, _, err = _invoke("session", "list", "--registry", str(registry_file))
    assert code == 5 and err.count("\n") == 1 and str(registry_file) in err, err
    assert registry_file.read_bytes() == damaged  # nothing "repaired" over the evidence
