"""The test harness itself: what every test relies on about the processes the suite starts."""

from __future__ import annotations

import signal
import subprocess
import sys

from tests.helpers import ROOT, seconds

# A runner started with SIGINT ignored (a background job) loads the suite's conftest, then
# starts a command, as the tests of Ctrl-C do: what the command finds.
_RUNNER = """
import subprocess, sys
import tests.conftest
print(subprocess.run([sys.executable, "-c",
                      "import signal; print(signal.getsignal(signal.SIGINT))"],
                     capture_output=True, text=True, check=True).stdout.strip())
"""


def test_commands_take_ctrl_c_even_when_the_suite_was_started_in_the_background() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER], cwd=ROOT, capture_output=True, text=True,
        timeout=seconds(60), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "<built-in function default_int_handler>", proc.stdout
