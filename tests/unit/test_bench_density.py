"""The density benchmark's pure parts: interrupt rates from two /proc/interrupts readings, the summary line."""

from __future__ import annotations

from podbay.bench.density import _interrupt_rates, summary

BEFORE = """           CPU0
  0:         76   IO-APIC   2-edge      timer
  9:         26   IO-APIC   9-edge      virtio3
LOC:        681   Local timer interrupts
RES:          0   Rescheduling interrupts
"""
AFTER = BEFORE.replace("26   IO", "30   IO").replace("681", "701")


def test_interrupt_rates_name_each_source_that_fired() -> None:
    assert _interrupt_rates(BEFORE, AFTER, 10.0) == {"9 virtio3": 0.4, "LOC": 2.0}


def test_the_summary_reads_every_count_and_says_what_is_missing() -> None:
    figure = {"median": 1.0, "min": 0.5, "max": 2.0}
    keys = ("uss_mib_median", "pss_mib_median", "host_mib_per_pod", "cpu_pct_per_pod", "cpu_pct_per_pod_sched")
    result = {
        "accelerator": "tcg",
        "memory_mib": 256,
        "counts": [1, 10],
        "runs": 3,
        "window_s": 10.0,
        "preload": {"size": 100_000_000},
        "summary": {"1": dict.fromkeys(keys, figure), "10": {**dict.fromkeys(keys, figure), "host_mib_per_pod": None}},
    }
    line = summary(result)
    assert "1 pod(s): USS 1.0 MiB (0.5..2.0)" in line and "10 pod(s)" in line and "n/a" in line
    assert "100 MB preloaded file" in line
