"""The supervisor's restart policy and the history `switchboard status` shows (infra/embedded/restarts.py)."""

from __future__ import annotations

from pathlib import Path

from infra.config import load_settings
from infra.embedded.components import plan
from infra.embedded.restarts import STATE_FILE, RestartPolicy, Restarts, read_restarts, write_restarts
from infra.embedded.stack import plan_names


def test_a_component_that_ran_a_while_is_started_again_at_once() -> None:
    policy = RestartPolicy()
    assert policy.delay(ran_s=11.0, quick_deaths_before=0) == 0.0
    assert policy.delay(ran_s=3600.0, quick_deaths_before=7) == 0.0, "a long run ends the crash loop"
    assert policy.quick_deaths_after(ran_s=3600.0, quick_deaths_before=7) == 0


def test_the_first_quick_death_is_started_again_at_once_and_a_crash_loop_waits_longer_each_time() -> None:
    policy = RestartPolicy(quick_s=10.0, first_delay_s=1.0, max_delay_s=60.0)
    deaths, delays = 0, []
    for _ in range(9):
        delays.append(policy.delay(ran_s=0.5, quick_deaths_before=deaths))
        deaths = policy.quick_deaths_after(ran_s=0.5, quick_deaths_before=deaths)
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert deaths == 9


def test_status_describes_restarts_and_a_pending_start(tmp_path: Path) -> None:
    write_restarts(tmp_path, {
        "worker-0": Restarts(restarts=2, last_death=0.0, last_exit="killed by SIGKILL"),
        "tansu": Restarts(quick_deaths=3, last_death=0.0, next_start=60.0, last_error="port 19092 is already in use"),
    })
    assert not list(tmp_path.glob("*.json")), "the run directory's *.json files are process records"
    history = read_restarts(tmp_path)
    worker = history["worker-0"].describe(running=True)
    assert worker.startswith("started again 2 times by the supervisor; last died ")
    assert worker.endswith(", killed by SIGKILL")
    tansu = history["tansu"].describe(running=False)
    assert "starting it again at " in tansu and "(3 quick death(s) in a row)" in tansu
    assert tansu.endswith("last restart failed: port 19092 is already in use")


def test_a_missing_or_torn_state_file_reads_as_no_history(tmp_path: Path) -> None:
    assert read_restarts(tmp_path) == {}
    (tmp_path / STATE_FILE).write_text('{"worker-0": {"restarts": 1, "somethi')
    assert read_restarts(tmp_path) == {}


def test_the_supervisor_is_planned_last_unless_turned_off(tmp_path: Path) -> None:
    on = load_settings(data_dir=tmp_path, workers={"count": 2})
    assert [c.name for c in plan(on)][-1] == "supervisor"
    assert [name for name, _, _ in plan_names(on)] == [c.name for c in plan(on)]
    off = load_settings(data_dir=tmp_path, workers={"count": 2}, embedded={"supervise": False})
    assert "supervisor" not in [c.name for c in plan(off)]
    assert "supervisor" not in [name for name, _, _ in plan_names(off)]


def test_the_supervisor_is_started_again_by_up_when_the_settings_change(tmp_path: Path) -> None:
    from infra.embedded.components import supervisor

    one = supervisor(load_settings(data_dir=tmp_path, workers={"count": 1})).settings_digest
    assert one == supervisor(load_settings(data_dir=tmp_path, workers={"count": 1})).settings_digest
    assert one != supervisor(load_settings(data_dir=tmp_path, workers={"count": 2})).settings_digest
