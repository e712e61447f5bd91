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


def _in_a_process_with_file_size_limit(limit: int, body: str) -> str:
    """Run `body` where the kernel refuses writes past `limit` bytes per file (RLIMIT_FSIZE:
    a short write, then EFBIG, as a full disk does with ENOSPC); returns what it printed."""
    script = textwrap.dedent("""
        import resource, signal, numpy as np
        from softswitch.media.wavfile import StreamingWav
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_BYTES, MAX_BYTES))
    """).replace("MAX_BYTES", str(limit)) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_write_refused_mid_frame_leaves_a_wav_of_the_whole_frames_written(tmp_path):
    path = tmp_path / "full.wav"
    limit = 44 + 4 * 1000 + 3  # a stereo frame cut in the middle
    out = _in_a_process_with_file_size_limit(limit, f"""
        wav = StreamingWav({str(path)!r}, 8000, channels=2)
        try:
            wav.write(np.full((4000, 2), 700, np.int16))
        except OSError as exc:
            print("refused", exc.errno, wav.written_bytes)
        wav.close(remove_empty=True)
    """)
    assert out.split()[:2] == ["refused", "27"] and int(out.split()[2]) == 4003  # EFBIG after a short write
    info = sf.info(path)
    assert info.frames == 1000 and path.stat().st_size == 44 + 4000  # the split frame is cut off
    data, _ = sf.read(path, dtype="int16")
    assert (data == 700).all()
    assert repair(path) is False  # nothing for the start-up repair to fix


def test_a_file_that_never_got_audio_is_removed_not_left_empty(tmp_path):
    header_only, nothing = tmp_path / "header-only.wav", tmp_path / "nothing.wav"
    out = _in_a_process_with_file_size_limit(44, f"""
        wav = StreamingWav({str(header_only)!r}, 8000)
        try:
            wav.write(np.full(160, 5, np.int16))
        except OSError:
            wav.close(remove_empty=True)
            print("removed", wav.removed)
    """)
    assert out.strip() == "removed True" and not header_only.exists()
    out = _in_a_process_with_file_size_limit(10, f"""
        try:
            StreamingWav({str(nothing)!r}, 8000)
        except OSError as exc:
            print("refused", exc.errno)
    """)
    assert out.strip() == "refused 27" and not nothing.exists()  # not even a 0-byte file


def test_start_up_removes_empty_wavs_and_leaves_finalized_ones_unreported(tmp_path, caplog):
    from softswitch.media.recorders import repair_recordings

    (tmp_path / "empty.wav").write_bytes(b"")
    wav = StreamingWav(tmp_path / "whole.wav", 8000)
    wav.write(np.full(800, 3, np.int16))
    wav.close()
    with caplog.at_level("INFO"):
        assert repair_recordings(tmp_path) == []
    assert not (tmp_path / "empty.wav").exists() and (tmp_path / "whole.wav").exists()
    assert "stopped while recording" not in caplog.text
