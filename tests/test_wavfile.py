"""Crash-safe WAV files: valid while growing, and repaired after a kill."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import soundfile as sf

from softswitch.media.wavfile import StreamingWav, repair, repair_directory


def test_streaming_wav_is_readable_while_it_grows_and_complete_after_close(tmp_path):
    path = tmp_path / "a.wav"
    wav = StreamingWav(path, 8000, header_interval=0.1)
    tone = (np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000) * 8000).astype(np.int16)
    wav.write(tone)
    during, rate = sf.read(path, dtype="int16")
    assert rate == 8000 and len(during) == 8000
    wav.write(tone[:4000])
    wav.close()
    data, _ = sf.read(path, dtype="int16")
    assert len(data) == 12000
    assert np.array_equal(data[:8000], tone)


def test_stereo_frames_keep_their_channels(tmp_path):
    path = tmp_path / "s.wav"
    wav = StreamingWav(path, 8000, channels=2)
    frames = np.stack([np.full(160, 100, np.int16), np.full(160, -200, np.int16)], axis=1)
    wav.write(frames)
    wav.close()
    data, _ = sf.read(path, dtype="int16")
    assert data.shape == (160, 2)
    assert (data[:, 0] == 100).all() and (data[:, 1] == -200).all()


def test_kill_9_leaves_a_playable_file_that_repair_completes(tmp_path):
    path = tmp_path / "killed.wav"
    script = textwrap.dedent(f"""
        import os, sys, numpy as np
        from softswitch.media.wavfile import StreamingWav
        wav = StreamingWav({str(path)!r}, 8000, header_interval=10.0)
        wav.write(np.full(8000 * 3, 1000, np.int16))
        print("written", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"written"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    before, _ = sf.read(path, dtype="int16")
    assert len(before) < 24000  # the header was not yet updated over the tail
    assert repair_directory(tmp_path) == [path]
    after, _ = sf.read(path, dtype="int16")
    assert len(after) == 24000 and (after == 1000).all()
    assert repair(path) is False


def test_repair_leaves_foreign_files_alone(tmp_path):
    other = tmp_path / "x.wav"
    other.write_bytes(b"not a wav at all, just text that is long enough to have a header")
    assert repair(other) is False
