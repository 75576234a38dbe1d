"""docs/tour.md runs as written: every stop has its four parts, every file it names exists, each
stop's test passes in under 30 s of CPU, and every ```bash block runs (blocks that edit code run
in a scratch copy of the repository and must show what the tour says they show; blocks marked as
taking minutes are not run).

Markers, on the line before a block (the tour's opening comment says the same for authors):
    <!-- tour:test -->                   the stop's test: one pytest command, timed
    <!-- tour:edits-code expect="X" -->  run in a scratch git copy; X must be in the output and
                                         the copy must be clean afterwards (the block undoes itself)
    <!-- tour:long -->                   takes minutes: not run here
"""
from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
from conftest import pythonpath_with  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOUR = os.path.join(REPO, "docs", "tour.md")
STOP_TEST_CPU_SECONDS = 30   # the issue: "each stop's test in under 30 seconds" (CPU time: see run())
PARTS = ("**Read**", "**The idea**", "**See it**", "**Exercise**")

if not os.path.isfile(TOUR):
    pytest.skip("docs/tour.md is not here (an installed package, not the repository)", allow_module_level=True)


@dataclass
class Block:
    code: str
    marker: str          # "" | "test" | "edits-code" | "long"
    expect: str | None
    line: int            # of the opening fence, 1-based

    @property
    def id(self) -> str:
        return f"line{self.line}" + (f"-{self.marker}" if self.marker else "")


@dataclass
class Stop:
    number: int
    title: str
    body: str
    blocks: list = field(default_factory=list)


def parse_tour(text: str) -> list[Stop]:
    stops, lines = [], text.split("\n")
    heads = [(i, m) for i, line in enumerate(lines) if (m := re.match(r"## (\d+)\. (.+)", line))]
    for k, (start, m) in enumerate(heads):
        end = heads[k + 1][0] if k + 1 < len(heads) else len(lines)
        stop = Stop(int(m.group(1)), m.group(2), "\n".join(lines[start:end]))
        i = start
        while i < end:
            if lines[i].strip() == "```bash":
                close = next(j for j in range(i + 1, end) if lines[j].strip() == "```")
                before = next((lines[j].strip() for j in range(i - 1, start, -1) if lines[j].strip()), "")
                marker = re.match(r"<!-- tour:([a-z-]+)(?: expect=\"([^\"]*)\")? -->", before)
                stop.blocks.append(Block("\n".join(lines[i + 1:close]), marker.group(1) if marker else "",
                                         marker.group(2) if marker else None, i + 1))
                i = close
            i += 1
        stops.append(stop)
    return stops


STOPS = parse_tour(open(TOUR, encoding="utf-8").read())
BLOCKS = [(stop, block) for stop in STOPS for block in stop.blocks]


def run(code: str, cwd: str) -> tuple[int, str, float]:
    """Run a block with bash as a reader would (`set -e`: a failing line fails the block).
    Returns (exit code, output, CPU seconds of the child processes). CPU time rather than wall
    time: the machine may be shared, and a reader's idle machine runs it in no more wall time
    than the CPU time it takes, give or take the file reads."""
    # Two threads, as on the 2-core machine the 30 s is about: CPU time sums every thread, and on a
    # 16-core GPU host torch's idle worker threads alone would multiply it.
    # The tour is the CPU reader's path: on a GPU host the GPU stays hidden, or the stops' tests
    # would run their CUDA variants (compiling Triton kernels), which the 30 s is not about.
    # OpenMP's idle workers sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE): a spinning worker
    # counts as CPU time without doing work, and on a busy machine it spins the longer (measured
    # 2026-11-30 on the 2-core CPU, stop 15's test alone: 32.5 s of CPU spinning, 17.6 s sleeping).
    # It does not cure a busy 16-core host: there the same test took 67 s spinning and 82 s
    # sleeping, building its decode kernels with gcc from an empty cache (README, versions).
    # TorchInductor builds kernels in a pool of one worker process per core, each importing torch
    # first: CPU time the stop's test does not need. With one compile thread it builds in the test's
    # own process (stop 15's test from an empty kernel cache, 2026-11-30 on the 2-core CPU: 28.8 s
    # of CPU with 16 workers, as a 16-core host starts, 25.0 s with 2, 23.3 s with 1; 17.2 s warm).
    env = dict(os.environ, PYTHONPATH=pythonpath_with(cwd), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="2",
               OMP_WAIT_POLICY="PASSIVE", TORCHINDUCTOR_COMPILE_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env.pop("MINIFT_KERNELS", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The wall-clock limit only stops a hung block: on a busy shared machine a 15 s (CPU) test has
    # taken 9 minutes of wall time.
    proc = subprocess.run(["bash", "-e", "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=3600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.returncode, proc.stdout + proc.stderr, cpu


# ---------------------------------------------------------------------- the shape of the tour
def test_stops_are_numbered_and_complete():
    assert [s.number for s in STOPS] == list(range(1, len(STOPS) + 1)) and len(STOPS) >= 12
    for stop in STOPS:
        missing = [p for p in PARTS if p not in stop.body]
        assert not missing, f"stop {stop.number} ({stop.title}) lacks {missing}"
        tests = [b for b in stop.blocks if b.marker == "test"]
        assert len(tests) == 1, f"stop {stop.number} needs exactly one <!-- tour:test --> block"
        assert re.fullmatch(r"pytest -q tests/\S+\.py( tests/\S+\.py)* -k \"?[\w ]+\"?", tests[0].code), tests[0].code
        assert len(stop.blocks) >= 2, f"stop {stop.number}: the exercise needs a command"
        for block in stop.blocks:
            assert block.marker in ("", "test", "edits-code", "long"), (stop.number, block.marker)
            assert (block.marker == "edits-code") == (block.expect is not None), (stop.number, block.line)


def test_every_named_file_exists():
    text = open(TOUR, encoding="utf-8").read()
    named = set(re.findall(r"\b((?:minift|kernels|scripts|tests|docs|data)/[\w./-]+\.(?:py|md|jsonl|txt))", text))
    assert named, "the tour names no files"
    missing = sorted(p for p in named if not os.path.exists(os.path.join(REPO, p)))
    assert not missing, f"docs/tour.md names files that do not exist: {missing}"


# ---------------------------------------------------------------------- the blocks, run as written
@pytest.mark.parametrize("stop,block", [(s, b) for s, b in BLOCKS if b.marker == "test"],
                         ids=lambda x: f"stop{x.number}" if isinstance(x, Stop) else x.id)
def test_stop_test_passes_in_seconds(stop, block, record_property):
    rc, out, cpu = run(block.code, REPO)
    record_property("cpu_seconds", round(cpu, 1))   # into --junitxml: scripts/gpu_check.sh reports the margins
    last = out.strip().splitlines()[-1] if out.strip() else ""
    assert rc == 0 and " passed" in last and "failed" not in last, f"stop {stop.number}:\n{out[-3000:]}"
    assert cpu < STOP_TEST_CPU_SECONDS, f"stop {stop.number}'s test took {cpu:.1f} s of CPU: {block.code}"


@pytest.mark.parametrize("stop,block", [(s, b) for s, b in BLOCKS if b.marker == ""],
                         ids=lambda x: f"stop{x.number}" if isinstance(x, Stop) else x.id)
def test_exercise_runs(stop, block):
    rc, out, _ = run(block.code, REPO)
    assert rc == 0, f"stop {stop.number}, block at line {block.line}:\n{out[-3000:]}"


@pytest.fixture(scope="module")
def scratch_repo(tmp_path_factory):
    """The tracked files in a fresh git repository of their own (the tour's `git checkout` works
    there), with the minift/kernels link a checkout makes for `import minift.kernels`."""
    root = str(tmp_path_factory.mktemp("tour") / "minift")
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for path in files:
        if os.path.isfile(os.path.join(REPO, path)):
            os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
            shutil.copy2(os.path.join(REPO, path), os.path.join(root, path))
    if not os.path.exists(os.path.join(root, "minift", "kernels")):
        os.symlink("../kernels", os.path.join(root, "minift", "kernels"))
    git = ["git", "-c", "user.name=tour", "-c", "user.email=tour@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(git + ["add", "-A"], cwd=root, check=True)
    subprocess.run(git + ["commit", "-qm", "tour"], cwd=root, check=True)
    where = subprocess.run([sys.executable, "-c", "import minift.kernels.nf4 as m; print(m.__file__)"], cwd=root,
                           env=dict(os.environ, PYTHONPATH=pythonpath_with(root)), capture_output=True, text=True, check=True)
    assert os.path.realpath(where.stdout.strip()).startswith(os.path.realpath(root))  # the copy, not REPO
    return root


@pytest.mark.parametrize("stop,block", [(s, b) for s, b in BLOCKS if b.marker == "edits-code"],
                         ids=lambda x: f"stop{x.number}" if isinstance(x, Stop) else x.id)
def test_code_changing_exercise_shows_its_effect(stop, block, scratch_repo):
    rc, out, _ = run(block.code, scratch_repo)
    assert rc == 0, f"stop {stop.number}, block at line {block.line}:\n{out[-3000:]}"
    assert block.expect in out, f"stop {stop.number}: expected {block.expect!r} in:\n{out[-3000:]}"
    status = subprocess.run(["git", "status", "--porcelain"], cwd=scratch_repo, capture_output=True, text=True)
    assert status.stdout == "", f"stop {stop.number}'s block left changes behind:\n{status.stdout}"
