"""The audit log stays bounded: a full log is moved aside once, whoever writes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from manager.audit import AuditLog, AuditRecord


def record(i: int, writer: str = "w") -> AuditRecord:
    return AuditRecord("evict", f"model_{writer}", i, f"lru: decision {i}", bytes=2**30)


def test_a_full_log_is_moved_aside_and_read_with_the_current_one(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path, max_bytes=1000)
    for i in range(100):
        audit.write(record(i))
    line = len(json.dumps(record(99).to_json())) + 1
    assert audit.rotated.is_file()
    assert audit.path.stat().st_size <= 1000 + line
    assert audit.rotated.stat().st_size <= 1000 + line
    kept = [r["version"] for r in audit.read()]
    # the newest records, oldest first, none missing between the two files
    assert kept == list(range(100 - len(kept), 100)) and len(kept) > 1000 // line
    assert not (tmp_path / ".tritonctl" / "audit.log.2").exists()


def test_writers_of_several_processes_rotate_once_and_tear_no_line(tmp_path: Path) -> None:
    logs = [AuditLog(tmp_path, max_bytes=4000) for _ in range(2)]  # as two processes do

    def write(n: int) -> None:
        for i in range(150):
            logs[n % 2].write(record(i, writer=str(n)))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    line = len(json.dumps(record(149, writer="3").to_json())) + 1
    for path in (logs[0].path, logs[0].rotated):
        lines = path.read_text().splitlines()
        assert all(json.loads(text)["action"] == "evict" for text in lines)
        assert path.stat().st_size <= 4000 + 4 * line  # each writer's last line at most
    # what is kept of each writer comes in its order; the last writer's last record is kept
    kept = logs[0].read()
    for n in range(4):
        mine = [r["version"] for r in kept if r["model"] == f"model_{n}"]
        assert mine == sorted(mine)
    assert kept[-1]["version"] == 149


def test_the_audit_command_shows_the_newest_records_of_a_model(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from manager.cli import main

    audit = AuditLog(tmp_path)
    for i in range(30):
        audit.write(record(i, writer="a" if i % 2 else "b"))
    audit.write(AuditRecord("pin", "model_a", None, "pinned by hand"))
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(main, ["--repo", str(tmp_path), "audit", *args])
        assert result.exit_code == 0, result.output
        return result.output

    shown = run("model_a", "--last", "3")
    assert "pinned by hand" in shown and "lru: decision 29" in shown
    assert "lru: decision 27" in shown and "decision 25" not in shown
    assert "model_b" not in shown and "1.0 GiB" in shown
    records = json.loads(run("--action", "evict", "--all", "--json"))
    assert [r["version"] for r in records] == list(range(30))
    assert json.loads(run("model_c", "--json")) == []
    assert "no audit records for model_c" in run("model_c")
    refused = runner.invoke(main, ["--repo", str(tmp_path), "audit", "--action", "drop"])
    assert refused.exit_code == 2 and "drop" in refused.output
