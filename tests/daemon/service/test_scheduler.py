"""Which jobs run when, from the settings; and that a live scheduler follows a reload."""

import threading
from datetime import UTC, datetime

from dreamd.daemon.service import scheduler as jobs
from dreamd.daemon.service.settings import DaemonSettings


def test_job_ids_and_intervals_come_from_the_settings():
    settings = DaemonSettings(inbox_scan_seconds=30, inbox_poll_seconds=1.5, dream_interval_minutes=10,
                              reevaluate_hours=2, misfire_grace_seconds=99)
    specs = {spec.id: spec for spec in jobs.job_specs(settings, heartbeat_seconds=5)}
    assert set(specs) == {"inbox-scan", "inbox-watch", "dream-cycle", "re-evaluate", "heartbeat"}
    assert specs["inbox-scan"].seconds == 30 and specs["inbox-scan"].first_run_in == 0.0  # at start
    assert specs["dream-cycle"].seconds == 600 and specs["dream-cycle"].first_run_in is None
    assert specs["re-evaluate"].seconds == 7200
    assert specs["inbox-watch"].seconds == 1.5
    for spec in specs.values():  # the dream cycle's second instance only asks for a catch-up run
        assert spec.options["max_instances"] == (2 if spec.id == "dream-cycle" else 1)
        assert spec.options["coalesce"] is True
    assert specs["dream-cycle"].options["misfire_grace_time"] == 99


def test_watch_off_at_zero():
    ids = {spec.id for spec in jobs.job_specs(DaemonSettings(inbox_poll_seconds=0), 5)}
    assert "inbox-watch" not in ids and "inbox-scan" in ids


def test_dream_early_threshold():
    assert jobs.should_dream_early(200, 200)
    assert not jobs.should_dream_early(199, 200)
    assert not jobs.should_dream_early(10_000, 0)  # 0: never early


def test_runs_due_while_one_runs_become_exactly_one_catch_up():
    gate = jobs.Coalesced()
    runs, started, release = [], threading.Event(), threading.Event()

    def job():  # what Service.dream_cycle does around its child
        if not gate.enter():
            return
        while True:
            runs.append(len(runs))
            started.set()
            release.wait(5)
            if not gate.again():
                return

    first = threading.Thread(target=job)
    first.start()
    assert started.wait(5)
    for _ in range(3):  # due three times while the first runs
        job()
    release.set()
    first.join(5)
    assert runs == [0, 1]  # the first, then one catch-up
    job()
    assert runs == [0, 1, 2]  # released: the next due run runs


def test_live_scheduler_runs_now_and_follows_new_settings():
    ran = threading.Event()
    functions = {job_id: (lambda: None) for job_id in jobs.JOB_IDS}
    functions["dream-cycle"] = ran.set
    specs = jobs.job_specs(DaemonSettings(), heartbeat_seconds=5)
    scheduler = jobs.build_scheduler(specs, functions)
    scheduler.start()
    try:
        job = scheduler.get_job("dream-cycle")
        assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (2, True, 300)
        assert job.next_run_time > datetime.now(UTC)
        assert jobs.run_now(scheduler, "dream-cycle")
        assert ran.wait(5), "run_now must wake the sleeping scheduler"
        assert not jobs.run_now(scheduler, "no-such-job")

        new = jobs.job_specs(DaemonSettings(dream_interval_minutes=5, inbox_poll_seconds=0,
                                            misfire_grace_seconds=7), heartbeat_seconds=5)
        changed = jobs.apply_specs(scheduler, new, functions)
        assert "dream-cycle" in changed and "inbox-watch" in changed
        assert scheduler.get_job("inbox-watch") is None
        job = scheduler.get_job("dream-cycle")
        assert job.trigger.interval.total_seconds() == 300 and job.misfire_grace_time == 7
        assert set(jobs.next_runs(scheduler)) == {"inbox-scan", "dream-cycle", "re-evaluate"}
    finally:
        scheduler.shutdown(wait=True)
