#!/usr/bin/env python3
"""Regenerates every prompt in this folder, reproducibly: speech with espeak-ng, converted by
sox to 8 kHz mono 16-bit WAV (the bridge's rate), and hold music synthesised with numpy.

    python prompts/generate.py          # rewrite all prompts
    python prompts/generate.py --check  # exit 1 if a prompt is missing

espeak-ng and sox come from native/setup-system.sh.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
RATE = 8000

SPEECH = {
    "welcome": "Welcome to soft switch.",
    "menu": "For support, press 1. For sales, press 2. To talk to our assistant, press 3.",
    "menu_queues": "For support, press 1. For sales, press 2.",
    "menu_invalid": "Sorry, that is not a valid choice.",
    "queue_position": "You are caller number",
    "queue_wait": "Please hold, an agent will be with you shortly.",
    "callback_offer": "To be called back instead of waiting, press 9.",
    "callback_confirm": "Thank you. We will call you back. You may hang up now, or keep holding.",
    "offline": "Sorry, no agent is available right now. Please call again later. Goodbye.",
    "offline_ai": "No agent is available right now. Our assistant will help you.",
    "customer_unavailable": "The customer is unavailable.",
    "goodbye": "Goodbye.",
    **{f"digit_{d}": w for d, w in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])},
}


def speak(text: str, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "155", "-w", str(raw), text], check=True)
        subprocess.run(["sox", "-D", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(out),
                        "gain", "-n", "-3"], check=True)


def hold_music(seconds: float = 45.0) -> np.ndarray:
    """A soft, slow arpeggio: recognisably music, tonally distinct from the test tones.

    45 s outlasts one 30 s turn of the demos' hold loop, which restarts it every turn."""
    t = np.arange(int(RATE * 0.5)) / RATE
    envelope = np.minimum(1.0, t / 0.02) * np.exp(-t * 3.0)
    notes = [261.63, 329.63, 392.00, 523.25, 392.00, 329.63]  # C major arpeggio
    bars = []
    while sum(len(b) for b in bars) < seconds * RATE:
        for f in notes:
            bars.append(0.25 * envelope * (np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t)))
    music = np.concatenate(bars)[: int(seconds * RATE)]
    return (music * 32767 / max(1.0, np.abs(music).max() / 0.5)).astype(np.int16)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that every prompt exists")
    args = ap.parse_args()
    names = list(SPEECH) + ["hold_music"]
    if args.check:
        missing = [n for n in names if not (HERE / f"{n}.wav").is_file()]
        for n in missing:
            print(f"missing prompt: prompts/{n}.wav", file=sys.stderr)
        return 1 if missing else 0
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not installed (run native/setup-system.sh)", file=sys.stderr)
            return 1
    for name, text in SPEECH.items():
        speak(text, HERE / f"{name}.wav")
    sf.write(HERE / "hold_music.wav", hold_music(), RATE, subtype="PCM_16")
    print(f"wrote {len(names)} prompts to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
