"""semisynth.progress: plain lines with rate and ETA where stderr is no terminal (logs, CI),
a rich bar on a terminal (a real pseudo-terminal here)."""

import io
import os
import pty
import sys
import textwrap

from semisynth import progress as progress_mod
from semisynth.progress import duration, logged, progress


def test_plain_lines_carry_count_rate_and_eta(monkeypatch):
    monkeypatch.setattr(progress_mod, "PLAIN_EVERY_S", 0.0)  # a line per advance
    log = io.StringIO()
    with progress("edited", total=4, unit="documents", also="tokens", stream=log) as bar:
        for _ in range(4):
            bar.advance(1, also=100)
    lines = log.getvalue().splitlines()
    assert len(lines) == 5  # one per advance, then the final one
    assert lines[1].startswith("edited: 2/4 documents, ") and "documents/s; 200 tokens, " in lines[1]
    assert "tokens/s, ETA " in lines[1]
    assert lines[-1].startswith("edited: 4/4 documents, ") and ", done in " in lines[-1]


def test_plain_lines_are_periodic_and_without_eta_when_the_total_is_unknown():
    log = io.StringIO()
    with progress("ingested", stream=log) as bar:
        for _ in range(10_000):
            bar.advance()
    lines = log.getvalue().splitlines()
    # well within PLAIN_EVERY_S: only the final line
    assert lines == [lines[-1]] and lines[0].startswith("ingested: 10,000 rows, ")
    assert "ETA" not in lines[0] and "rows/s, done in " in lines[0]


def test_the_final_line_is_written_when_the_step_fails():
    log = io.StringIO()
    try:
        with progress("scored", total=10, unit="documents", stream=log) as bar:
            bar.advance(3)
            raise RuntimeError("the prior ran out of memory")
    except RuntimeError:
        pass
    assert log.getvalue().startswith("scored: 3/10 documents, ")


def test_a_block_that_reports_nothing_writes_no_line_of_zeros():
    lines = []
    with logged("shard 0a1b scored", lines.append, unit="documents", also="tokens"):
        pass  # its scores were cached: the caller says so
    assert lines == []


def test_a_logged_bar_writes_to_a_log_with_its_detail_and_an_eta_from_its_second_count():
    """The flow's tasks log their progress through the same protocol: generation's ETA comes
    from its tokens (documents end late), training shows its loss, the last line is written
    even when the step fails."""
    lines = []
    try:
        with logged("generated", lines.append, total=4, unit="documents", also="tokens",
                    also_total=400, every=0.0) as bar:
            bar.advance(0, also=100)  # no document ended yet
            bar.advance(1, also=100, detail="loss 2.500")
            raise RuntimeError("out of memory")
    except RuntimeError:
        pass
    assert len(lines) == 3
    assert lines[0].startswith("generated: 0/4 documents, ") and "; 100/400 tokens, " in lines[0]
    assert ", ETA " in lines[0]
    assert "200/400 tokens" in lines[1] and ", loss 2.500, ETA " in lines[1]
    assert lines[2].startswith("generated: 1/4 documents, ") and ", done in " in lines[2]


def test_durations_read_as_seconds_minutes_and_hours():
    assert [duration(s) for s in (4.4, 65, 3 * 3600 + 7 * 60 + 30)] == ["4 s", "1 min 05 s", "3 h 07 min"]


def test_a_terminal_gets_a_rich_bar_with_rate_and_eta(tmp_path):
    script = tmp_path / "bar.py"
    script.write_text(textwrap.dedent("""
        import time
        from semisynth.progress import progress
        with progress("generated", total=20, unit="documents", also="tokens") as bar:
            for _ in range(20):
                time.sleep(0.02)
                bar.advance(1, also=50)
    """))
    pid, fd = pty.fork()
    if pid == 0:  # the child: stderr is the pseudo-terminal
        os.environ["COLUMNS"] = "160"
        os.execv(sys.executable, [sys.executable, str(script)])
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out.decode(errors="replace")
    text = out.decode(errors="replace")
    assert "\x1b[" in text and "━" in text  # drawn with escapes: a bar, not lines
    assert "generated" in text and "20/20 documents" in text and "documents/s" in text
    assert "1,000 tokens" in text and "tokens/s" in text and "ETA" in text
    assert "done in" not in text  # the plain lines' wording: not used on a terminal
