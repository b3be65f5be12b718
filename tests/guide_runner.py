"""Run docs/USER_GUIDE.md as written: the harness behind tests/test_user_guide.py.

The guide is documentation first; what makes it runnable is an HTML comment just before a
fenced block, which a reader of the rendered guide never sees:

    <!-- run: as=intern-phone -->                       run the block in that person's terminal
    <!-- run: as=relay-host background=relay ready=https://relay.example.org/readyz -->
    <!-- run: as=it-workstation ADA_CODE=/\\(ada\\.byron\\).*?enrolment code:\\s+(\\S+)/ -->
    <!-- run: as=it-workstation until=/every copy confirmed destroyed/ -->
    <!-- run: as=it-workstation file=department.csv -->  save the block (e.g. a CSV) as a file
    <!-- not-run: a reference listing, not a step -->   a block that is deliberately not run

and, on their own (no block follows), actions a person takes between commands:

    <!-- run: stop=desktop -->                          Ctrl-C in that terminal
    <!-- run: wait=desktop-link -->                     wait for that terminal's command to end
    <!-- run: look=intern-watch until=/filed/ -->       watch a terminal until it shows this
    <!-- run: copy=it-workstation:secure/st-elsewhere.pub.json to=relay-host -->

Options of ``run`` (``key=value``; a value in ``/.../`` is a Python regular expression, which
runs to the first ``/`` followed by a space or the end of the comment):

* ``as=ACTOR``: whose terminal. Each actor has its own HOME (= working directory), its own
  environment (:data:`ACTORS` in tests/test_user_guide.py) and its own shell variables: an
  ``export`` in one block holds for that actor's later blocks, as in a terminal left open.
* ``NAME=/regex/`` (a NAME in capitals): a placeholder. Group 1 of the first match in the
  block's output is what a person copies; every later block has the word NAME replaced by it.
  The guide's text next to the block says where the person reads it.
* ``background=NAME``: the block keeps running (a server, ``lightbox watch``); its output goes
  to ``NAME.log``. It counts as started once its output shows every placeholder's and
  ``expect``'s regex and ``ready=URL`` (if given) answers 200.
* ``expect=/regex/``: the output must show this (what the guide promises the person sees).
* ``until=/regex/``: run the block again, once a second, until its output shows this (a person
  checking again a little later); ``status=N``: the exit status the guide describes (default 0).

Before running, the fictional addresses the guide uses are mapped to the test's real ones
(``substitutions``, e.g. ``https://relay.example.org`` to the relay's loopback address), in the
blocks and in the options. A block that fails, or does not show what it must, stops the run
with the block as run, its output, and the tail of every background terminal (the relay's log
among them). Each block's output is kept in ``artefacts`` (NN-actor.txt) for reading later.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from tests.helpers import seconds

__all__ = ["Block", "GuideFailed", "Journey", "Step", "parse_guide"]

_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_COMMENT = re.compile(r"^<!--\s*(run|not-run):(.*?)-->\s*$")
_OPTION = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)=(/.*?/(?=\s|$)|\S+)")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
_KEYS = {"as", "background", "ready", "expect", "until", "status", "file", "stop", "wait",
         "look", "copy", "to"}
_ACTIONS = {"stop", "wait", "look", "copy"}


class GuideFailed(AssertionError):
    """A step of the guide did not do what the guide says; the message shows which."""


@dataclasses.dataclass(frozen=True)
class Block:
    """A fenced block of the guide: where it starts (1-based line), its language and text."""

    line: int
    lang: str
    text: str


@dataclasses.dataclass(frozen=True)
class Step:
    """One ``run`` annotation, with the block it annotates (None for an action)."""

    line: int
    options: Mapping[str, str]
    captures: Mapping[str, re.Pattern[str]]
    block: Block | None

    def regex(self, key: str) -> re.Pattern[str] | None:
        value = self.options.get(key)
        return None if value is None else _compile(value, self.line)

    def describe(self) -> str:
        where = f"docs/USER_GUIDE.md line {self.block.line if self.block else self.line}"
        return f"{where} (as {self.options.get('as', '-')})"


@dataclasses.dataclass(frozen=True)
class Guide:
    steps: list[Step]
    not_run: list[tuple[Block, str]]


def _compile(value: str, line: int) -> re.Pattern[str]:
    if not (len(value) >= 2 and value.startswith("/") and value.endswith("/")):
        raise ValueError(f"line {line}: {value!r} is not a /regex/")
    return re.compile(value[1:-1], re.MULTILINE)


def _parse_options(text: str, line: int) -> tuple[dict[str, str], dict[str, re.Pattern[str]]]:
    options: dict[str, str] = {}
    captures: dict[str, re.Pattern[str]] = {}
    rest = text.strip()
    while rest:
        m = _OPTION.match(rest)
        if m is None:
            raise ValueError(f"line {line}: cannot read the annotation at {rest!r}")
        key, value = m.group(1), m.group(2)
        if _PLACEHOLDER.match(key):
            pattern = _compile(value, line)
            if pattern.groups < 1:
                raise ValueError(f"line {line}: {key}'s pattern has no (group) to copy")
            captures[key] = pattern
        elif key in _KEYS:
            options[key] = value
        else:
            raise ValueError(f"line {line}: unknown option {key!r}")
        rest = rest[m.end():].strip()
    return options, captures


def parse_guide(text: str) -> Guide:
    """The guide's steps in order. Every ``sh`` block must be annotated (run or not-run), an
    annotation with ``as=`` must be followed by a block (blank lines between are allowed), and
    an action (stop, wait, copy) must not."""
    lines = text.splitlines()
    steps: list[Step] = []
    not_run: list[tuple[Block, str]] = []
    pending: tuple[str, int, str] | None = None  # (kind, line, text) of the last annotation
    i = 0
    while i < len(lines):
        line = lines[i]
        if (c := _COMMENT.match(line.strip())) is not None:
            if pending is not None:
                _flush_action(pending, steps)
            pending = (c.group(1), i + 1, c.group(2))
            i += 1
            continue
        if (f := _FENCE.match(line)) is not None:
            start, indent = i + 1, len(f.group(1))
            j = start
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            text = "".join(x[indent:] + "\n" for x in lines[start:j])  # a block in a list
            block = Block(line=start, lang=f.group(2), text=text)
            i = j + 1
            if pending is None:
                if block.lang == "sh":
                    raise ValueError(f"line {start}: a sh block with neither <!-- run: ... --> "
                                     "nor <!-- not-run: reason --> before it")
                continue
            kind, at, body = pending
            pending = None
            if kind == "not-run":
                if not body.strip():
                    raise ValueError(f"line {at}: not-run needs a reason")
                not_run.append((block, body.strip()))
                continue
            options, captures = _parse_options(body, at)
            if "as" not in options:
                raise ValueError(f"line {at}: a run annotation before a block needs as=ACTOR")
            if block.lang != "sh" and "file" not in options:
                raise ValueError(f"line {at}: only sh blocks run; save others with file=NAME")
            steps.append(Step(at, options, captures, block))
            continue
        if line.strip() and pending is not None:
            _flush_action(pending, steps)
            pending = None
        i += 1
    if pending is not None:
        _flush_action(pending, steps)
    return Guide(steps, not_run)


def _flush_action(pending: tuple[str, int, str], steps: list[Step]) -> None:
    kind, at, body = pending
    if kind == "not-run":
        raise ValueError(f"line {at}: not-run must come just before a block")
    options, captures = _parse_options(body, at)
    if captures or "as" in options or not (_ACTIONS & options.keys()):
        raise ValueError(f"line {at}: an annotation with no block after it must be an action "
                         "(stop=, wait=, look= or copy=)")
    steps.append(Step(at, options, captures, None))


# --- running -----------------------------------------------------------------------------------


@dataclasses.dataclass
class _Background:
    name: str
    step: Step
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Journey:
    """The guide's steps run in order, each actor in their own folder and environment."""

    def __init__(self, workdir: Path, *, actors: Mapping[str, Mapping[str, str]],
                 base_env: Mapping[str, str], substitutions: Mapping[str, str],
                 artefacts: Path, step_timeout: float = 120.0,
                 until_timeout: float = 60.0) -> None:
        self.workdir = workdir
        self.actors = actors
        self.base_env = dict(base_env)
        self.substitutions = dict(substitutions)
        self.artefacts = artefacts
        self.step_timeout = seconds(step_timeout)
        self.until_timeout = seconds(until_timeout)
        self.values: dict[str, str] = {}
        self.background: dict[str, _Background] = {}
        self.count = 0
        self.placeholders: set[str] = set()
        shutil.rmtree(artefacts, ignore_errors=True)
        artefacts.mkdir(parents=True)
        for actor in actors:
            self.home(actor).mkdir(parents=True, exist_ok=True, mode=0o700)

    def home(self, actor: str) -> Path:
        if actor not in self.actors:
            raise GuideFailed(f"unknown actor {actor!r}: add it to ACTORS")
        return self.workdir / actor

    # -- text -----------------------------------------------------------------------------------

    def fill(self, text: str, step: Step) -> str:
        """The guide's fictional addresses mapped to the test's, and placeholders filled."""
        for fictional, real in self.substitutions.items():
            text = text.replace(fictional, real)
        for name in sorted(self.placeholders, key=len, reverse=True):
            pattern = re.compile(rf"\b{name}\b")
            if not pattern.search(text):
                continue
            if name not in self.values:
                raise GuideFailed(f"{step.describe()}: placeholder {name} is used before a "
                                  "block shows it (capture it earlier with NAME=/regex/)")
            value = self.values[name]
            text = pattern.sub(lambda _m: value, text)  # noqa: B023 - used at once
        return text

    def _record(self, step: Step, command: str, output: str, status: object) -> None:
        self.count += 1
        actor = step.options.get("as", "action")
        path = self.artefacts / f"{self.count:02d}-{actor}.txt"
        path.write_text(f"# {step.describe()}\n$ {command.rstrip()}\n{output}"
                        f"# exit status: {status}\n")

    def fail(self, step: Step, why: str, command: str = "", output: str = "") -> GuideFailed:
        parts = [f"{step.describe()}: {why}"]
        if command:
            parts.append("--- the block as run:\n" + command.rstrip())
        if output:
            parts.append("--- its output (last 60 lines):\n" + _tail(output, 60))
        for bg in self.background.values():
            state = "running" if bg.proc.poll() is None else f"exited {bg.proc.returncode}"
            parts.append(f"--- {bg.name} ({state}), last 30 lines of {bg.log}:\n"
                         + _tail(bg.output(), 30))
        return GuideFailed("\n".join(parts))

    # -- the steps --------------------------------------------------------------------------------

    def run_all(self, steps: list[Step]) -> None:
        self.placeholders = {name for s in steps for name in s.captures}
        for step in steps:
            self.run(step)

    def run(self, step: Step) -> None:
        o = step.options
        if step.block is None:
            if "stop" in o:
                self.stop(o["stop"], step)
            if "wait" in o:
                self.wait(o["wait"], step)
            if "look" in o:
                self.look(o["look"], step)
            if "copy" in o:
                self.copy(o["copy"], o.get("to", ""), step)
            return
        actor = o["as"]
        text = self.fill(step.block.text, step)
        if "file" in o:
            path = self.home(actor) / o["file"]
            path.write_text(text)
            self._record(step, f"cat > {o['file']} <<'EOF'\n{text}EOF", "", 0)
            return
        if "background" in o:
            self.start(o["background"], actor, text, step)
            return
        until = step.regex("until")
        deadline = time.monotonic() + self.until_timeout
        while True:
            status, output = self.execute(actor, text, step)
            if until is None or until.search(output):
                break
            if time.monotonic() > deadline:
                raise self.fail(step, f"its output never showed /{until.pattern}/ (tried for "
                                f"{self.until_timeout:.0f} s)", text, output)
            time.sleep(1.0)
        self.check(step, text, output, status)

    def check(self, step: Step, text: str, output: str, status: int | None) -> None:
        want = int(step.options.get("status", "0"))
        if status != want:
            raise self.fail(step, f"exit status {status}, the guide expects {want}", text,
                            output)
        expect = step.regex("expect")
        if expect is not None and not expect.search(output):
            raise self.fail(step, f"its output does not show /{expect.pattern}/", text, output)
        self.capture(step, text, output)

    def capture(self, step: Step, text: str, output: str) -> None:
        for name, pattern in step.captures.items():
            m = pattern.search(output)
            if m is None:
                raise self.fail(step, f"{name}: /{pattern.pattern}/ is not in its output",
                                text, output)
            self.values[name] = m.group(1)

    def _env(self, actor: str) -> dict[str, str]:
        home = self.home(actor)
        env = dict(self.base_env)
        env.update(self.actors[actor])
        env.update(HOME=str(home), PWD=str(home))
        return env

    def _script(self, actor: str, text: str, *, keep_exports: bool) -> list[str]:
        """bash with the actor's shell variables from earlier blocks; ``-e`` and pipefail, so a
        failing command fails the block as it would stop a careful person."""
        saved = self.home(actor) / ".guide-exports"
        script = f"set -eo pipefail\n[ -f {saved} ] && source {saved}\n{text}"
        if keep_exports:
            script += f"\nexport -p > {saved}\n"
        return ["bash", "-c", script]

    def execute(self, actor: str, text: str, step: Step) -> tuple[int | None, str]:
        started = time.monotonic()
        try:
            proc = subprocess.run(self._script(actor, text, keep_exports=True),
                                  cwd=self.home(actor), env=self._env(actor),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=self.step_timeout,
                                  start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode(errors="replace")
            self._record(step, text, output, None)
            raise self.fail(step, f"still running after {self.step_timeout:.0f} s", text,
                            output) from None
        output = proc.stdout.decode(errors="replace")
        took = f"{proc.returncode} ({time.monotonic() - started:.1f} s)"
        self._record(step, text, output, took)
        return proc.returncode, output

    def start(self, name: str, actor: str, text: str, step: Step) -> None:
        if name in self.background:
            raise self.fail(step, f"a background terminal {name!r} is already running")
        log = self.artefacts / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(self._script(actor, text, keep_exports=False),
                                    cwd=self.home(actor), env=self._env(actor),
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        bg = self.background[name] = _Background(name, step, proc, log)
        self.count += 1
        (self.artefacts / f"{self.count:02d}-{actor}.txt").write_text(
            f"# {step.describe()}, in the background: output in {log.name}\n$ {text}")
        ready = step.options.get("ready")
        url = self.fill(ready, step) if ready else None
        waits = [*step.captures.values(), *filter(None, [step.regex("expect")])]
        deadline = time.monotonic() + self.step_timeout
        while True:
            output = bg.output()
            if all(p.search(output) for p in waits) and (url is None or _answers(url)):
                break
            if proc.poll() is not None:
                raise self.fail(step, f"it exited with {proc.returncode} before it was ready",
                                text, output)
            if time.monotonic() > deadline:
                raise self.fail(step, "not ready in time", text, output)
            time.sleep(0.1)
        self.check(step, text, output, 0)

    def stop(self, name: str, step: Step) -> None:
        """Ctrl-C: SIGINT to the terminal's foreground process group, which must then end."""
        bg = self.background.pop(name, None)
        if bg is None:
            raise self.fail(step, f"no background terminal {name!r} to stop")
        if not _interrupt(bg.proc):
            raise self.fail(step, f"{name} did not stop on Ctrl-C", output=bg.output())
        if bg.proc.returncode != 0:
            raise self.fail(step, f"{name} exited with {bg.proc.returncode} on Ctrl-C",
                            output=bg.output())
        self._record(step, f"(Ctrl-C in the {name} terminal)", _tail(bg.output(), 5) + "\n", 0)

    def wait(self, name: str, step: Step) -> None:
        """The person waits for that terminal's command to finish; it must succeed."""
        bg = self.background.pop(name, None)
        if bg is None:
            raise self.fail(step, f"no background terminal {name!r} to wait for")
        try:
            bg.proc.wait(self.step_timeout)
        except subprocess.TimeoutExpired:
            _kill(bg.proc)
            raise self.fail(step, f"{name} did not finish", output=bg.output()) from None
        if bg.proc.returncode != 0:
            raise self.fail(step, f"{name} exited with {bg.proc.returncode}",
                            output=bg.output())

    def look(self, name: str, step: Step) -> None:
        """The person looks at a terminal left running until it shows ``until=/regex/``."""
        bg = self.background.get(name)
        until = step.regex("until")
        if bg is None or until is None:
            raise self.fail(step, f"look={name} needs a running background terminal and until=")
        deadline = time.monotonic() + self.until_timeout
        while not until.search(bg.output()):
            if time.monotonic() > deadline:
                raise self.fail(step, f"{name} never showed /{until.pattern}/",
                                output=bg.output())
            time.sleep(0.2)
        self._record(step, f"(look at the {name} terminal)", _tail(bg.output(), 20) + "\n", 0)

    def copy(self, source: str, target: str, step: Step) -> None:
        """A file handed from one machine to another (a USB stick, scp)."""
        actor, _, path = source.partition(":")
        src = self.home(actor) / path
        if not target or not src.exists():
            raise self.fail(step, f"cannot copy {source} to {target!r}: no such file or actor")
        shutil.copy(src, self.home(target) / src.name)
        self._record(step, f"copy {source} to {target}", "", 0)

    def close(self) -> None:
        """Stop whatever is still running (Ctrl-C, then SIGKILL); keep the logs."""
        for name in reversed(list(self.background)):
            _interrupt(self.background.pop(name).proc)


def _interrupt(proc: subprocess.Popen[bytes]) -> bool:
    """Ctrl-C to the process group; SIGKILL if it has not ended 30 s later (then False)."""
    if proc.poll() is not None:
        return True
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(seconds(30))
        return True
    except subprocess.TimeoutExpired:
        _kill(proc)
        return False


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(seconds(10))


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
