"""The step timer's windows (sift_ds.telemetry), in process: a window's timing keys cover every step
added to it, read marks are folded as they are reached, and a micro-step that ends where the next
begins (Megatron) is sent once, never as an empty pair."""
import torch

from sift_ds.telemetry import SelectionTelemetry, selection_stats


def selection(telemetry):
    telemetry.add(selection_stats(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([False, True, False, True]),
                                  True, 0.5))


def test_a_window_counts_every_step_and_reads_its_marks_as_they_are_reached():
    telemetry = SelectionTelemetry(torch.device("cpu"))
    timer = telemetry.timer
    for _ in range(3):
        t0 = timer.now()
        selection(telemetry)
        telemetry.add_step(t0, timer.now(), timer.now(), selections=2)
        assert telemetry.marks == []  # on the CPU every mark is reached: nothing held per step
    totals = telemetry.totals()
    assert totals["sift/selection_time_s"][1] == 6 and totals["sift/score_kept_mean"] == (18.0, 6.0)
    assert 0 < totals["sift/selection_share"][0] <= totals["sift/selection_share"][1]
    telemetry.timer.done = lambda mark: False  # a device behind the host: the marks wait for the read
    t0 = timer.now()
    selection(telemetry)
    telemetry.add_step(t0, timer.now(), timer.now())
    assert len(telemetry.marks) == 1 and telemetry.read()["sift/score_kept_mean"] == 3.0
    assert telemetry.totals() == {} and telemetry.marks == []  # read starts a new window


def test_micro_steps_that_end_where_the_next_begins_are_each_sent_once():
    telemetry = SelectionTelemetry(torch.device("cpu"))
    telemetry.selected(telemetry.begin())
    assert telemetry.ready_timing_pairs() == {}  # nothing has ended before the first micro-step
    telemetry.selected(telemetry.begin())
    pairs = telemetry.ready_timing_pairs()
    assert pairs["sift/selection_time_s"][1] == 1 and 0 < pairs["sift/selection_share"][0] <= pairs["sift/selection_share"][1]
    telemetry.interrupt()  # evaluation: the open micro-step ends here, and is sent after it
    telemetry.interrupt()
    telemetry.selected(telemetry.begin())
    assert telemetry.ready_timing_pairs()["sift/selection_time_s"][1] == 1
    telemetry.timer.done = lambda mark: False  # a device behind the host: one at a time, the oldest first
    for _ in range(2):
        telemetry.selected(telemetry.begin())
    telemetry.begin()
    assert [telemetry.ready_timing_pairs()["sift/selection_time_s"][1].item() for _ in range(3)] == [1, 1, 1]
    assert telemetry.ready_timing_pairs() == {}
