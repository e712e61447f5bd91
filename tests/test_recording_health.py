"""Whether recordings are failing: set by a disk error, cleared by a recording opened after it."""

import errno

from softswitch.media.health import RecordingHealth, RecordingState, describe, is_disk_error


def test_the_failing_state_clears_only_when_a_recording_opened_after_the_failure_writes():
    health = RecordingHealth(wall=lambda: 100.0)
    before = health.opened()
    health.failed("/rec/a.wav", "leg leg_1 (call-id c1)", OSError(errno.ENOSPC, "No space left on device"))
    assert health.state is RecordingState.FAILING and health.failures_total == 1
    assert not health.wrote(before), "a recording from before the failure proves nothing"
    after = health.opened()
    assert health.wrote(after) and not health.failing
    doc = health.document()
    assert doc["failing"] is False and doc["failures"] == 1 and doc["recoveredAt"] == 100.0
    assert doc["lastFailure"] == {"path": "/rec/a.wav", "owner": "leg leg_1 (call-id c1)",
                                  "error": "No space left on device (ENOSPC)", "at": 100.0}


def test_disk_errors_are_told_apart_from_bad_paths():
    assert is_disk_error(OSError(errno.EROFS, "Read-only file system"))
    assert is_disk_error(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_disk_error(IsADirectoryError(errno.EISDIR, "Is a directory"))
    assert describe(OSError(errno.EROFS, "Read-only file system")) == "Read-only file system (EROFS)"
