"""Every file the library and the CLI write survives a kill in the middle of its write.

Each case first writes a file normally, then rewrites it in a child process that
the operating system kills part way through the write (a file-size limit,
RLIMIT_FSIZE, with SIGXFSZ at its default action: the process dies the moment a
write crosses the limit). The previous file must be left byte for byte, and the
next ordinary write must leave no temporary file behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hessian_spectra._atomic import atomic_open, clean_stale, write_text
from hessian_spectra.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or not hasattr(signal, "SIGXFSZ"), reason="POSIX file-size limits"
)

LIMIT = 4096  # bytes: every file below is larger, so each write is killed part way

KILL = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; the OS default kills
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
"""

# Each case: (setup, write); both run with `out` (the folder) and `run` (0: the
# previous write, 1: the one that is killed) defined. Setup runs before the limit.
CASES = {
    "result json and npz": (
        "import torch, hessian_spectra as hs\n"
        "op = hs.DenseOperator(torch.diag(torch.arange(1.0, 601.0, dtype=torch.float64)))\n"
        "res = hs.eigsh(op, k=3 + run, seed=0)\n",
        "res.to_json(out / 'eigs.json')\n",
    ),
    "write_json": (
        "from hessian_spectra.results import write_json\n",
        "write_json(out / 'run.json', {'values': [run + i / 7 for i in range(3000)]})\n",
    ),
    "checkpoint": (
        "import torch\nfrom hessian_spectra.checkpoint import save_checkpoint\n",
        "save_checkpoint(out / 'eigs.ckpt', 'trace', {'n': 1}, "
        "{'x': torch.full((5000,), float(run))})\n",
    ),
    "figure": (
        "from hessian_spectra.figures import new_figure, save_figure\n"
        "import matplotlib.font_manager\n"
        "fig, ax = new_figure()\nax.plot(range(50 + run), 'o-')\nfig.canvas.draw()\n",
        "save_figure(fig, out / 'fig.png')\n",
    ),
    "report": (
        "from hessian_spectra.report import Report\n"
        "rep = Report('run %d' % run, settings={'x': 'y' * 6000})\n",
        "rep.write(out / 'report.html')\n",
    ),
    "experiment csv": (
        "from hessian_spectra.experiments._io import write_csv\n",
        "write_csv(out / 'rows.csv', [{'a': run, 'b': i} for i in range(2000)], ['a', 'b'])\n",
    ),
    "train model.pt": (
        "from hessian_spectra.cli import main\nimport matplotlib.font_manager\n",
        "main(['--quiet', 'train', '--epochs', '1', '--samples', '64', '--seed', str(run), "
        "'--out', str(out)])\n",
    ),
}


def _script(setup: str, write: str, out: Path, run: int, kill: bool) -> str:
    head = f"from pathlib import Path\nout = Path({str(out)!r})\nrun = {run}\n"
    limit = KILL.format(limit=LIMIT) if kill else ""
    return head + setup + limit + write + "print('finished')\n"


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("case", list(CASES))
def test_a_write_killed_midway_leaves_the_previous_file(case, tmp_path):
    setup, write = CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    done = _python(_script(setup, write, out, 0, kill=False))
    assert done.returncode == 0 and "finished" in done.stdout, done.stderr
    before = _snapshot(out)
    assert before and all(len(b) > LIMIT for n, b in before.items() if n != "training.json")

    killed = _python(_script(setup, write, out, 1, kill=True))
    assert killed.returncode == -signal.SIGXFSZ, (killed.returncode, killed.stderr[-2000:])
    after = {n: b for n, b in _snapshot(out).items() if not n.endswith(".tmp")}
    assert after == before, "a killed write damaged or removed the previous file"

    again = _python(_script(setup, write, out, 1, kill=False))
    assert again.returncode == 0, again.stderr
    assert _temps(out) == [], "the next write left the killed write's temporary file"
    assert _snapshot(out) != before  # and it did write the new content


def test_train_model_pt_loads_after_a_killed_rewrite(tmp_path):
    setup, write = CASES["train model.pt"]
    out = tmp_path / "out"
    assert _python(_script(setup, write, out, 0, kill=False)).returncode == 0
    _python(_script(setup, write, out, 1, kill=True))
    state = torch.load(out / "model.pt", weights_only=True)  # still a whole state_dict
    assert "0.weight" in state


def test_stale_checkpoint_temporaries_are_cleaned_on_save_and_load(tmp_path):
    p = tmp_path / "eigs.ckpt"
    save_checkpoint(p, "trace", {"n": 1}, {"x": torch.ones(3)})
    # what killed saves left: today's writer's names and the earlier writer's
    old = [tmp_path / ".eigs.ckpt.abcd1234.tmp", tmp_path / "eigs.ckpt.k2x_9zq0.tmp"]
    for f in old:
        f.write_bytes(b"x" * 100)
    keep = tmp_path / "eigs.ckpt.notes.txt"  # not a temporary file of the checkpoint
    keep.write_text("mine")
    load_checkpoint(p, "trace", {"n": 1})
    assert not any(f.exists() for f in old) and keep.exists()
    for f in old:
        f.write_bytes(b"x" * 100)
    save_checkpoint(p, "trace", {"n": 1}, {"x": torch.ones(3)})
    assert not any(f.exists() for f in old) and keep.exists()


def test_atomic_open_keeps_the_file_when_the_writer_raises(tmp_path):
    p = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_open(p, "w") as fh:
        fh.write("new, half written")
        raise RuntimeError("killed")
    assert p.read_text() == "old" and _temps(tmp_path) == []


def test_clean_stale_matches_only_temporaries_of_its_file(tmp_path):
    names = [
        ".a.json.q1w2e3r4.tmp",  # today's
        "a.json.q1w2e3r4.tmp",  # earlier checkpoints'
        "a.json.tmp",  # earlier results' and reports'
        ".a.json.x.q1w2e3r4.tmp",  # another file's (a.json.x)
        "a.json.backup.tmp",  # the user's
        "a.json",
    ]
    for n in names:
        (tmp_path / n).write_text("x")
    removed = {p.name for p in clean_stale(tmp_path / "a.json")}
    assert removed == set(names[:3])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[3:])


def test_no_writer_bypasses_the_atomic_writer():
    """Every write in the package goes through hessian_spectra._atomic (into `fh`/`buf`)."""
    root = Path(__file__).resolve().parents[1] / "src" / "hessian_spectra"
    calls = [  # matched with string literals removed
        r"\.write_(text|bytes)\(",  # Path methods; _atomic's functions take the path first
        r"np\.savez(_compressed)?\((?!fh\b|buf\b)",
        r"torch\.save\((?!.*,\s*(fh|buf)\)\s*$)",
        r"\.savefig\((?!fh\b|buf\b)",
    ]
    opens = r"\bopen\([^)]*[\"'][wax]b?\+?[\"']"  # open(..., "w"), path.open("wb"), ...
    found = []
    for f in sorted(root.rglob("*.py")):
        if f.name == "_atomic.py":
            continue
        for i, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("  #")[0]
            bare = re.sub(r"\"[^\"]*\"|'[^']*'|``[^`]*``", "''", code)
            if code.lstrip().startswith(">>>"):
                continue
            if any(re.search(p, bare) for p in calls) or re.search(opens, code):
                found.append(f"{f.relative_to(root)}:{i}: {line.strip()}")
    assert found == [], "\n".join(found)


def test_the_kill_harness_really_kills(tmp_path):
    """Without the atomic writer, a killed write leaves a torn file (the harness works)."""
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        p = Path({str(tmp_path / "plain.txt")!r})
        {KILL.format(limit=LIMIT).strip().replace(chr(10), chr(10) + " " * 8)}
        p.write_text("y" * {4 * LIMIT})
        """
    )
    (tmp_path / "plain.txt").write_text("x" * (2 * LIMIT))
    proc = _python(code)
    assert proc.returncode == -signal.SIGXFSZ
    assert (tmp_path / "plain.txt").read_text() == "y" * LIMIT  # torn
