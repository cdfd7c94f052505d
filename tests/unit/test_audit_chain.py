"""The coordinator's hash-chained audit log: appends, verification, tampering, and the CLI.

Real SQLite files throughout; tampering is done the way an attacker would, with
plain ``sqlite3`` on the registry file. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tffprod.errors import AuditError
from tffprod.registry import Registry
from tffprod.registry.audit import GENESIS, current_actor, entry_hash

DIGITS_TASK = "tffprod.examples.digits:task"


def make_chain(path: str, n: int = 4) -> list[dict]:
    with Registry.open(path) as registry:
        return [registry.record_action("test.act", f"subject-{i}", {"i": i}) for i in range(1, n + 1)]


def sql(path: str, *statements: tuple) -> None:
    conn = sqlite3.connect(path)
    try:
        for statement in statements:
            conn.execute(*statement)
        conn.commit()
    finally:
        conn.close()


def rows(path: str) -> list[dict]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM audit ORDER BY seq")]
    finally:
        conn.close()


def problem(path: str, **kwargs) -> dict:
    with Registry.open(path) as registry, pytest.raises(AuditError) as caught:
        registry.verify_audit(**kwargs)
    report = caught.value.report
    assert report["ok"] is False and str(caught.value) == report["problem"]["message"]
    return report["problem"]


@pytest.fixture
def chain(registry_path: str) -> str:
    make_chain(registry_path)
    return registry_path


# ---------------------------------------------------------------- appending and verifying


def test_an_empty_log_verifies(registry_path: str) -> None:
    with Registry.open(registry_path) as registry:
        assert registry.verify_audit() == {"ok": True, "entries": 0, "head": None, "problem": None}
        assert registry.list_audit() == []


def test_entries_chain_and_verify(registry_path: str) -> None:
    entries = make_chain(registry_path)
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    assert entries[0]["prev_hash"] == GENESIS
    for prev, entry in zip(entries, entries[1:]):
        assert entry["prev_hash"] == prev["hash"]
    for stored in rows(registry_path):  # the hash covers exactly the stored fields
        assert entry_hash(stored) == stored["hash"]
    with Registry.open(registry_path) as registry:  # a fresh connection sees the same chain
        report = registry.verify_audit()
        assert report == {"ok": True, "entries": 4, "head": {"seq": 4, "hash": entries[-1]["hash"]}, "problem": None}
        listed = registry.list_audit()
    assert [e["seq"] for e in listed] == [4, 3, 2, 1]
    assert listed[-1] == {**entries[0], "details": {"i": 1}}
    assert {e["actor"] for e in listed} == {current_actor()}


def test_actor_limit_and_action_filter(registry_path: str) -> None:
    with Registry.open(registry_path) as registry:
        registry.record_action("dataset.register", "a/x:1", {"path": "/d"}, actor="alice")
        registry.record_action("model.alias", "m:1", {"alias": "prod"})
        registry.record_action("dataset.register", "a/y:1")
        assert [e["subject"] for e in registry.list_audit(action="dataset.register")] == ["a/y:1", "a/x:1"]
        assert [e["seq"] for e in registry.list_audit(limit=2)] == [3, 2]
        assert registry.list_audit()[-1]["actor"] == "alice"
        assert registry.list_audit()[0]["details"] == {}
        with pytest.raises(ValueError):
            registry.record_action("", "x")
        with pytest.raises(ValueError):
            registry.record_action("a.b", "x", details=["not", "a", "dict"])  # type: ignore[arg-type]
        assert registry.verify_audit()["entries"] == 3


# ---------------------------------------------------------------- tampering is detected and named


def test_an_edited_entry_is_detected(chain: str) -> None:
    sql(chain, ("UPDATE audit SET details = ? WHERE seq = 2", ['{"i": 99}']))
    found = problem(chain)
    assert found["kind"] == "edited" and found["seq"] == 2
    assert found["message"] == "audit entry 2 edited: its content does not match its hash"


@pytest.mark.parametrize("column, value", [("actor", "mallory"), ("action", "x.y"), ("at", "2020-01-01"),
                                           ("subject", "other")])
def test_editing_any_field_is_detected(chain: str, column: str, value: str) -> None:
    sql(chain, (f"UPDATE audit SET {column} = ? WHERE seq = 3", [value]))
    assert (problem(chain)["kind"], problem(chain)["seq"]) == ("edited", 3)


def test_an_edited_and_rehashed_entry_breaks_the_next_link(chain: str) -> None:
    row = rows(chain)[1]
    row["details"] = '{"i": 99}'
    sql(chain, ("UPDATE audit SET details = ?, hash = ? WHERE seq = 2", [row["details"], entry_hash(row)]))
    found = problem(chain)
    assert found["kind"] == "unlinked" and found["seq"] == 3
    assert found["message"].startswith("audit entry 3 does not link to entry 2")


def test_a_rehashed_last_entry_does_not_match_the_head(chain: str) -> None:
    row = rows(chain)[-1]
    row["subject"] = "forged"
    sql(chain, ("UPDATE audit SET subject = ?, hash = ? WHERE seq = 4", [row["subject"], entry_hash(row)]))
    assert (problem(chain)["kind"], problem(chain)["seq"]) == ("head", 4)


@pytest.mark.parametrize("deleted, message", [
    ([2], "audit entry 2 deleted: entry 3 follows entry 1"),
    ([2, 3], "audit entry 2..3 deleted: entry 4 follows entry 1"),
    ([1], "audit entry 1 deleted: entry 2 follows the start of the chain"),
])
def test_a_deleted_entry_is_detected(chain: str, deleted: list[int], message: str) -> None:
    sql(chain, *[("DELETE FROM audit WHERE seq = ?", [seq]) for seq in deleted])
    found = problem(chain)
    assert found["kind"] == "deleted" and found["seq"] == deleted[0] and found["message"] == message


def test_a_deleted_and_renumbered_entry_is_detected(chain: str) -> None:
    sql(chain, ("DELETE FROM audit WHERE seq = 2", []), ("UPDATE audit SET seq = 2 WHERE seq = 3", []),
        ("UPDATE audit SET seq = 3 WHERE seq = 4", []), ("UPDATE audit_head SET seq = 3", []))
    found = problem(chain)
    assert found["kind"] == "unlinked" and found["seq"] == 2


def test_a_truncated_last_entry_is_detected_by_the_head(chain: str) -> None:
    sql(chain, ("DELETE FROM audit WHERE seq = 4", []))
    found = problem(chain)
    assert found == {"kind": "deleted", "seq": 4, "message": "audit entry 4 deleted: the head records entry 4"}


def test_a_truncation_stays_detected_after_later_appends(chain: str) -> None:
    sql(chain, ("DELETE FROM audit WHERE seq >= 3", []))
    with Registry.open(chain) as registry:
        entry = registry.record_action("test.act", "after")
    assert entry["seq"] == 5  # links to the recorded head, not to the last row left
    found = problem(chain)
    assert found["kind"] == "deleted" and found["message"] == "audit entry 3..4 deleted: entry 5 follows entry 2"


def test_a_deleted_head_is_detected(chain: str) -> None:
    sql(chain, ("DELETE FROM audit_head", []))
    assert problem(chain)["kind"] == "head"


def test_a_forged_entry_inserted_in_the_middle_is_detected(chain: str) -> None:
    original = rows(chain)
    # Make room at seq 2 (highest first, so seq stays unique), then insert a well-formed, well-linked entry.
    sql(chain, *[("UPDATE audit SET seq = ? WHERE seq = ?", [r["seq"] + 1, r["seq"]]) for r in reversed(original[1:])],
        ("UPDATE audit_head SET seq = 5", []))
    forged = {"seq": 2, "at": original[1]["at"], "actor": "mallory", "action": "model.export", "subject": "m:1",
              "details": "{}", "prev_hash": original[0]["hash"]}
    forged["hash"] = entry_hash(forged)
    sql(chain, ("INSERT INTO audit VALUES (:seq, :at, :actor, :action, :subject, :details, :prev_hash, :hash)",
                forged))
    found = problem(chain)
    assert found["kind"] == "inserted" and found["seq"] == 2
    assert found["message"] == "audit entry 2 inserted: entry 3 links to the entry before it"


def test_a_forged_entry_appended_behind_the_registry_is_detected(chain: str) -> None:
    last = rows(chain)[-1]
    forged = {"seq": 5, "at": last["at"], "actor": "mallory", "action": "model.export", "subject": "m:1",
              "details": "{}", "prev_hash": last["hash"]}
    forged["hash"] = entry_hash(forged)
    sql(chain, ("INSERT INTO audit VALUES (:seq, :at, :actor, :action, :subject, :details, :prev_hash, :hash)",
                forged))
    found = problem(chain)
    assert found["kind"] == "inserted" and found["seq"] == 5


def test_expect_head_checks_a_head_noted_elsewhere(chain: str) -> None:
    with Registry.open(chain) as registry:
        noted = registry.verify_audit()["head"]["hash"]
        registry.record_action("test.act", "later")
        assert registry.verify_audit(expect_head=noted.upper())["ok"]  # an earlier head is still in the chain
    found = problem(chain, expect_head="ab" * 32)
    assert found["kind"] == "expected-head" and ("ab" * 32) in found["message"]


# ---------------------------------------------------------------- the CLI


def test_cli_verify_ok(run_cli, chain: str) -> None:
    result = run_cli("audit", "verify", "--registry", chain)
    assert result.exit_code == 0, result.output
    head = rows(chain)[-1]["hash"]
    assert result.stdout == f"audit chain ok: 4 entries, head {head}\n"
    report = json.loads(run_cli("audit", "verify", "--registry", chain, "--json", "--expect-head", head).stdout)
    assert report["ok"] and report["head"] == {"seq": 4, "hash": head}


def test_cli_verify_names_the_edited_entry(run_cli, chain: str) -> None:
    sql(chain, ("UPDATE audit SET details = ? WHERE seq = 3", ['{"i": 0}']))
    result = run_cli("audit", "verify", "--registry", chain)
    assert result.exit_code == 11 and result.stdout == ""
    assert result.stderr == "Error: audit entry 3 edited: its content does not match its hash\n"
    result = run_cli("audit", "verify", "--registry", chain, "--json")
    assert result.exit_code == 11
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["problem"]["seq"] == 3 and report["problem"]["kind"] == "edited"


def test_cli_verify_names_a_deleted_entry(run_cli, chain: str) -> None:
    sql(chain, ("DELETE FROM audit WHERE seq = 4", []))
    result = run_cli("audit", "verify", "--registry", chain)
    assert result.exit_code == 11
    assert result.stderr == "Error: audit entry 4 deleted: the head records entry 4\n"


def test_cli_verify_refuses_an_unknown_expected_head(run_cli, chain: str) -> None:
    result = run_cli("audit", "verify", "--registry", chain, "--expect-head", "0" * 64)
    assert result.exit_code == 11 and result.stderr.startswith("Error: audit head 000")


def test_cli_list(run_cli, chain: str) -> None:
    listed = json.loads(run_cli("audit", "list", "--registry", chain, "--json", "--limit", "2").stdout)
    assert [e["seq"] for e in listed] == [4, 3] and listed[0]["details"] == {"i": 4}
    text = run_cli("audit", "list", "--registry", chain).stdout.splitlines()
    assert text[0].split() == ["SEQ", "AT", "ACTOR", "ACTION", "SUBJECT"] and len(text) == 5
    assert run_cli("audit", "list", "--registry", chain, "--limit", "0").exit_code == 2


def test_dataset_register_is_audited(run_cli, registry_path: str, digits_data) -> None:
    data = digits_data["hospital-a"]["train"]
    result = run_cli("dataset", "register", "hospital-a/train", data, "--task", DIGITS_TASK,
                     "--budget-epsilon", "8", "--budget-delta", "1e-5", "--registry", registry_path)
    assert result.exit_code == 0, result.output
    with Registry.open(registry_path) as registry:
        budget, registered = registry.list_audit()
        assert registry.verify_audit()["entries"] == 2
    assert registered["action"] == "dataset.register" and registered["subject"] == "hospital-a/train:1"
    assert registered["details"]["path"] == str(Path(data).resolve())
    assert registered["details"]["content_hash"].startswith("sha256:")
    assert budget["action"] == "privacy.budget" and budget["subject"] == "hospital-a/train"
    assert budget["details"] == {"epsilon": 8.0, "delta": 1e-5, "source": "coordinator"}


def test_site_add_is_audited_without_secrets(run_cli, registry_path: str, tmp_path: Path) -> None:
    files = {}
    for option in ("ca", "cert", "key", "token-file"):
        files[option] = tmp_path / option
        files[option].write_text("SECRET-" + option)
    result = run_cli("site", "add", "hospital-a", "--address", "127.0.0.1:7001", "--registry", registry_path,
                     *[arg for option, path in files.items() for arg in (f"--{option}", path)])
    assert result.exit_code == 0, result.output
    with Registry.open(registry_path) as registry:
        (entry,) = registry.list_audit()
    assert entry["action"] == "site.add" and entry["subject"] == "hospital-a"
    assert entry["details"]["address"] == "127.0.0.1:7001"
    assert entry["details"]["info"]["token_file"] == str(files["token-file"].resolve())
    assert "SECRET" not in json.dumps(entry)
