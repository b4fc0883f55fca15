"""Faults: kill -9 of push, gc and export at random moments (commit's is in system/test_crash.py),
a full disk under commit and checkout, and gc running beside a commit and beside a push.

After every fault the repository must be one `vml fsck` and plain `git fsck` find clean,
every entry recorded before must check out exactly, and the next commit and checkout work.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Vml, git_fsck_clean, one_line_error
from support.processes import kill_at, start, vml_env
from support.repofiles import tree_digest

MiB = 1024 * 1024
ATTEMPTS = 5


def write_random(path: Path, size: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))


def timed(cwd: Path, *args: str) -> float:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "vml", *args], cwd=cwd, env=vml_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return time.monotonic() - started


def fsck_clean(vml: Vml, repo: Path) -> None:
    report = vml("--repo", str(repo), "fsck", "--json", check=False)
    assert report.returncode == 0, report.stdout + report.stderr
    git_fsck_clean(repo)


@pytest.fixture
def history(repo, guest: Path, tmp_path: Path):
    """main: two entries over 24 MiB of random data; side: an entry with 8 MiB of its own
    (deleted, so gc has something to free). Returns {entry: tree digest} of main's entries."""
    for i in range(3):
        write_random(guest / "data" / f"part{i}.bin", 8 * MiB, i)
    first = repo("commit", "-m", "first", "--json").json()["entry"]
    expected = {first: tree_digest(guest)}
    write_random(guest / "data" / "part0.bin", 8 * MiB, 10)
    (guest / "etc" / "hosts").write_text("10.0.0.1 changed\n")
    second = repo("commit", "-m", "second", "--json").json()["entry"]
    expected[second] = tree_digest(guest)
    repo("switch", "-c", "side")
    write_random(guest / "data" / "side.bin", 8 * MiB, 20)
    repo("commit", "-m", "side")
    repo("switch", "main")
    repo("branch", "-D", "side")
    return expected


def entries_intact(vml: Vml, expected: dict[str, str], tmp_path: Path, repo_args: tuple[str, ...] = ()) -> None:
    for entry, digest in expected.items():
        target = tmp_path / f"check-{entry[:12]}-{time.monotonic_ns()}"
        vml(*repo_args, "checkout", entry, "--to", str(target))
        assert tree_digest(target) == digest, f"entry {entry[:12]} no longer checks out as it was recorded"
        shutil.rmtree(target)


def still_works(vml: Vml, guest: Path, tmp_path: Path) -> None:
    """After a fault: a commit and a checkout of it."""
    (guest / "etc" / "after-fault").write_text(f"{time.monotonic_ns()}\n")
    entry = vml("commit", "-m", "after the fault", "--json").json()["entry"]
    target = tmp_path / f"after-{time.monotonic_ns()}"
    vml("checkout", entry, "--to", str(target))
    assert tree_digest(target) == tree_digest(guest)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["push", "gc", "export"])
def test_kill_9_at_random_moments(repo, guest: Path, tmp_path: Path, history: dict[str, str], command: str):
    rng = random.Random(f"faults-{command}")
    remote = tmp_path / "shared.vml"
    bundle = tmp_path / "out" / "main.vmlb"
    bundle.parent.mkdir()
    if command == "push":
        repo("init", "--bare", str(remote))
        repo("remote", "add", "origin", str(remote))
        args = ("push", "origin", "main")
        repo("init", "--bare", str(tmp_path / "measure.vml"))  # a push of the same work, to time
        repo("remote", "add", "measure", str(tmp_path / "measure.vml"))
        duration = timed(tmp_path, "push", "measure", "main")
    elif command == "gc":
        args = ("gc", "--expire", "now")
        copy = tmp_path / "copy"
        shutil.copytree(tmp_path / ".vml", copy / ".vml", symlinks=True)
        duration = timed(copy, *args)
        shutil.rmtree(copy)
    else:
        args = ("export", "main", "-o", str(bundle), "--full")
        duration = timed(tmp_path, *args)
        bundle.unlink()

    kills = 0
    for attempt in range(ATTEMPTS):
        kills += kill_at(start(tmp_path, *args), rng.uniform(0.05, 0.95) * duration)
        fsck_clean(repo, tmp_path / ".vml")
        entries_intact(repo, history, tmp_path)
        if command == "push":
            fsck_clean(repo, remote)
        if command == "export" and bundle.exists():  # whole, or not there at all
            other = Vml(tmp_path / f"importer{attempt}")
            other.cwd.mkdir()
            other("init")
            other("import", str(bundle))
            entries_intact(other, history, tmp_path)
            bundle.unlink()
    assert kills >= 2, f"only {kills} of {ATTEMPTS} runs were still running when killed: the test tested little"

    # The command itself completes afterwards, and nothing earlier was lost.
    repo(*args)
    fsck_clean(repo, tmp_path / ".vml")
    entries_intact(repo, history, tmp_path)
    if command == "push":
        fsck_clean(repo, remote)
        entries_intact(repo, history, tmp_path, ("--repo", str(remote)))
    if command == "export":
        other = Vml(tmp_path / "importer-final")
        other.cwd.mkdir()
        other("init")
        other("import", str(bundle))
        entries_intact(other, history, tmp_path)
    still_works(repo, guest, tmp_path)


# -- a full disk


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 20 MB tmpfs, unmounted afterwards (the tests run as root: a failure to mount fails)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_during_commit(tmp_path: Path, small_disk: Path, worker_processes: str):
    """The repository on a 20 MB disk, an area of 40 MB that does not compress: one line,
    nothing recorded, nothing half-written left, and once there is room the commit works."""
    guest = tmp_path / "guest"
    (guest / "etc").mkdir(parents=True)
    (guest / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    vml = Vml(small_disk)
    vml("init")
    vml("area", "add", "wa", "--dir", str(guest))
    first = vml("commit", "-m", "small", "--json").json()["entry"]
    first_tree = tree_digest(guest)
    for i in range(5):
        write_random(guest / "data" / f"part{i}.bin", 8 * MiB, 100 + i)
    packs = small_disk / ".vml" / "vml" / "store" / "packs"
    before = set(packs.glob("*/*.pack"))
    line = one_line_error(vml("commit", "-m", "too big", check=False), code=3)
    assert "disk of the repository is full: nothing was recorded" in line, line
    # Packs finished before the disk filled stay, and the line says how to free them; reader
    # processes (each filling a pack of its own) may have finished none.
    kept = set(packs.glob("*/*.pack")) - before
    assert ("vml gc" in line) == bool(kept), (line, kept)
    assert vml("log", "--json").json()[0]["id"] == first  # nothing recorded
    assert not [p for p in (small_disk / ".vml" / "vml" / "store" / "tmp").iterdir()], "half-written packs left behind"
    fsck_clean(vml, small_disk / ".vml")
    entries_intact(vml, {first: first_tree}, tmp_path)
    for i in range(4):
        (guest / "data" / f"part{i}.bin").unlink()
    vml("gc")  # as the message says: what the failed commit stored goes
    second = vml("commit", "-m", "fits", "--json").json()
    assert second["created"]
    entries_intact(vml, {first: first_tree, second["entry"]: tree_digest(guest)}, tmp_path)
    fsck_clean(vml, small_disk / ".vml")


def test_full_disk_during_checkout(repo, guest: Path, tmp_path: Path, small_disk: Path, worker_processes: str):
    for i in range(5):
        write_random(guest / "data" / f"part{i}.bin", 8 * MiB, 200 + i)
    entry = repo("commit", "-m", "40 MB", "--json").json()["entry"]
    tree = tree_digest(guest)
    # Into a new directory: one line, and the directory is gone again.
    line = one_line_error(repo("checkout", entry, "--to", str(small_disk / "out"), check=False), code=3)
    assert "is full: nothing of the entry was left there" in line, line
    assert not (small_disk / "out").exists()
    # Into an area: one line; the area's HEAD has not moved; a checkout elsewhere still works.
    repo("area", "add", "small", "--dir", str(small_disk / "area"))
    line = one_line_error(repo("checkout", entry, "-a", "small", check=False), code=3)
    assert "disk of area small is full" in line and "HEAD has not moved" in line, line
    assert repo("status", "-a", "small", "--json").json()["entry"] is None
    repo.fsck_clean()
    entries_intact(repo, {entry: tree}, tmp_path)


def test_a_worker_dies_with_its_command(tmp_path: Path):
    """A worker process is killed when its command's process dies (SIGKILL to the command
    alone, not its group), instead of going on with what it was given: a killed commit's
    reader went on writing packs into the store."""
    marker = tmp_path / "working"
    script = tmp_path / "command.py"
    script.write_text(
        "import time\n"
        "from vml.workers import Workers\n"
        f"workers = Workers('support.processes:sleeping_worker', {str(marker)!r}, 1)\n"
        "workers.submit('sleep')\n"
        "print(workers.pids()[0], flush=True)\n"
        "time.sleep(120)\n"
    )
    env = {**vml_env(), "PYTHONPATH": str(Path(__file__).parents[1])}  # (tests/, where support is)
    command = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        worker = int(command.stdout.readline())
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marker.exists(), "the worker never began its request"
    finally:
        command.kill()
        command.wait()  # (not its output: the worker holds that pipe too)
        command.stdout.close()
    status = Path(f"/proc/{worker}/stat")
    deadline = time.monotonic() + 10
    while status.exists() and status.read_text().rsplit(")", 1)[1].split()[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not status.exists() or status.read_text().rsplit(")", 1)[1].split()[0] == "Z", "the worker outlived its command"


def kill_at_third_request(monkeypatch, *, once_answered: bool = False) -> list[int]:
    """Worker processes (vml/workers.py) of which the one given the third request is killed
    right after it is sent, perhaps halfway through it; the list of requests sent, by pid.
    `once_answered`: not before the first request is answered (the workers are at work)."""
    from vml import workers

    sent: list[int] = []
    answers = []
    submit = workers._Worker.submit

    def submit_then_kill(worker, *args):
        future = submit(worker, *args)
        sent.append(worker.process.pid)
        answers.append(future)
        if len(sent) == 3:
            if once_answered:
                answers[0].exception(timeout=60)
            worker.process.kill()
        return future

    monkeypatch.setattr(workers._Worker, "submit", submit_then_kill)
    return sent


def test_a_killed_writer_process_fails_the_checkout_in_one_line(repo, guest: Path, tmp_path: Path, monkeypatch):
    """A writer process of a large checkout killed while it writes a batch: one line naming
    it, no target left half-written, the repository clean, and the next checkout whole."""
    from vml.areas.restore import local

    monkeypatch.setattr(local, "PROCESSES_AFTER", 0)  # a large checkout's way, from the first file
    monkeypatch.setenv("VML_WORKER_PROCESSES", "2")

    for i in range(600):  # ten batches and more
        write_random(guest / "many" / f"d{i % 7}" / f"f{i}.bin", 1000 + i, 300 + i)
    entry = repo("commit", "-m", "600 files", "--json").json()["entry"]
    tree = tree_digest(guest)
    sent = kill_at_third_request(monkeypatch)
    target = tmp_path / "out"
    result = repo("checkout", entry, "--to", str(target), check=False)
    line = one_line_error(result, code=None)
    assert result.returncode != 0 and len(sent) >= 3, "the checkout gave no batch to a writer process"
    assert "a writer process of the restore was killed (signal 9)" in line, line
    assert not target.exists(), "the failed checkout left its partial tree"
    repo.fsck_clean()
    monkeypatch.undo()
    entries_intact(repo, {entry: tree}, tmp_path)


def test_a_killed_reader_process_fails_the_commit_in_one_line(repo, guest: Path, tmp_path: Path, monkeypatch):
    """A reader process of a large commit killed while it reads a batch: one line naming it,
    nothing recorded, the repository clean, and the next commit saves everything."""
    from vml.areas.capture import local

    first = repo("commit", "-m", "before", "--json").json()["entry"]
    for i in range(600):  # ten batches and more
        write_random(guest / "many" / f"d{i % 7}" / f"f{i}.bin", 1000 + i, 500 + i)
    monkeypatch.setattr(local, "PROCESSES_AFTER", 0)  # a large commit's way, from the first file
    monkeypatch.setenv("VML_WORKER_PROCESSES", "2")
    sent = kill_at_third_request(monkeypatch, once_answered=True)
    result = repo("commit", "-m", "killed", check=False)
    line = one_line_error(result, code=None)
    assert result.returncode != 0 and len(sent) >= 3, "the commit gave no batch to a reader process"
    assert "a reader process of the commit was killed (signal 9)" in line, line
    assert repo("log", "--json").json()[0]["id"] == first  # nothing recorded
    # The readers write packs of their own: the ones they had open go with them.
    assert not list((repo.cwd / ".vml" / "vml" / "store" / "tmp").iterdir()), "half-written packs left behind"
    repo.fsck_clean()
    monkeypatch.undo()
    entry = repo("commit", "-m", "after", "--json").json()["entry"]
    entries_intact(repo, {entry: tree_digest(guest)}, tmp_path)


def test_a_reader_answer_that_cannot_be_taken_fails_the_commit(repo, guest: Path, monkeypatch):
    """A reader's packs that vml's process cannot take into its store (a fault injected where it
    adopts them, on the thread the answer came in on): the commit fails in one line, soon,
    rather than waiting for the batch for ever, and records nothing."""
    import threading

    from vml.areas.capture import local, processes
    from vml.errors import VmlError

    first = repo("commit", "-m", "before", "--json").json()["entry"]
    for i in range(300):
        write_random(guest / "many" / f"f{i}.bin", 1000 + i, 900 + i)
    monkeypatch.setattr(local, "PROCESSES_AFTER", 0)
    monkeypatch.setenv("VML_WORKER_PROCESSES", "2")

    def refuse(_readers, _finished):
        raise VmlError("injected: the packs could not be taken")

    monkeypatch.setattr(processes.ReaderProcesses, "_adopt", refuse)
    results = []
    committing = threading.Thread(target=lambda: results.append(repo("commit", "-m", "refused", check=False)), daemon=True)
    committing.start()
    committing.join(timeout=120)
    assert not committing.is_alive(), "the commit waits for ever for a batch whose answer failed"
    line = one_line_error(results[0], code=None)
    assert results[0].returncode != 0 and "injected: the packs could not be taken" in line, line
    monkeypatch.undo()
    assert repo("log", "--json").json()[0]["id"] == first  # nothing recorded
    repo.fsck_clean()


def test_the_worker_processes_setting(repo, guest: Path, tmp_path: Path, monkeypatch):
    """VML_WORKER_PROCESSES=0 keeps a large checkout in vml's own process; a value that is
    not a number of processes is one line, before anything is written."""
    from vml import workers
    from vml.areas.restore import local

    for i in range(200):
        write_random(guest / "many" / f"f{i}.bin", 500 + i, 400 + i)
    entry = repo("commit", "-m", "200 files", "--json").json()["entry"]
    monkeypatch.setattr(local, "PROCESSES_AFTER", 0)
    started = []
    start_writer = workers._Worker.__init__

    def counted(writer, *args, **kwargs):
        started.append(writer)
        start_writer(writer, *args, **kwargs)

    monkeypatch.setattr(workers._Worker, "__init__", counted)
    monkeypatch.setenv("VML_WORKER_PROCESSES", "0")
    repo("checkout", entry, "--to", str(tmp_path / "threads"))
    assert started == []
    monkeypatch.setenv("VML_WORKER_PROCESSES", "3")
    repo("checkout", entry, "--to", str(tmp_path / "three"))
    assert len(started) == 3
    assert tree_digest(tmp_path / "threads") == tree_digest(tmp_path / "three") == tree_digest(guest)
    monkeypatch.setenv("VML_WORKER_PROCESSES", "many")
    line = one_line_error(repo("checkout", entry, "--to", str(tmp_path / "none"), check=False))
    assert "VML_WORKER_PROCESSES" in line and "many" in line, line
    assert not (tmp_path / "none").exists()


# -- gc beside a commit and beside a push


def test_gc_beside_a_commit(repo, guest: Path, tmp_path: Path, history: dict[str, str]):
    """gc needs the repository alone, a commit shares it: whichever starts first, the other
    waits, and both finish with everything the commit saved kept."""
    for round_ in range(3):
        write_random(guest / "data" / "part1.bin", 8 * MiB, 300 + round_)
        commit = start(tmp_path, "commit", "-m", f"beside gc {round_}", "--json")
        time.sleep(0.05 * round_)
        gc = start(tmp_path, "gc", "--expire", "now")
        assert gc.wait(timeout=300) == 0, gc.stderr.read()
        assert commit.wait(timeout=300) == 0, commit.stderr.read()
        history[repo("log", "-n", "1", "--json").json()[0]["id"]] = tree_digest(guest)
        fsck_clean(repo, tmp_path / ".vml")
        entries_intact(repo, history, tmp_path)


def test_gc_of_a_remote_beside_a_push(repo, guest: Path, tmp_path: Path, history: dict[str, str]):
    """gc of the shared repository while a push into it runs: gc refuses (one line) while
    the push is in progress, or runs before or after it; the pushed entries are all there."""
    remote = tmp_path / "shared.vml"
    repo("init", "--bare", str(remote))
    repo("remote", "add", "origin", str(remote))
    other = Vml(tmp_path)
    for round_ in range(3):
        write_random(guest / "data" / "part2.bin", 8 * MiB, 400 + round_)
        history[repo("commit", "-m", f"to push {round_}", "--json").json()["entry"]] = tree_digest(guest)
        push = start(tmp_path, "push", "origin", "main")
        time.sleep(0.1 * round_)
        gc = other("--repo", str(remote), "gc", "--expire", "now", check=False)
        if gc.returncode != 0:
            assert "push into this repository is in progress" in one_line_error(gc, code=3)
        assert push.wait(timeout=300) == 0, push.stderr.read()
        fsck_clean(repo, remote)
        entries_intact(repo, history, tmp_path, ("--repo", str(remote)))
        other("--repo", str(remote), "gc", "--expire", "now")  # and once it is done, gc runs
        entries_intact(repo, history, tmp_path, ("--repo", str(remote)))


def test_a_ref_lock_file_left_by_a_killed_process_does_not_stop_the_next_command(repo, guest: Path, tmp_path: Path):
    """libgit2 writes a ref through REF.lock; kill -9 at that moment leaves the file, and git
    would refuse every later update of the ref. vml changes refs under its own refs lock, so a
    REF.lock it finds then is a dead process's: it goes, and the command goes on."""
    first = repo("commit", "-m", "first", "--json").json()["entry"]
    remote = tmp_path / "shared.vml"
    repo("init", "--bare", str(remote))
    repo("remote", "add", "origin", str(remote))
    repo("push", "origin", "main")
    left = [tmp_path / ".vml" / "refs" / "heads" / "main.lock", tmp_path / ".vml" / "refs" / "remotes" / "origin" / "main.lock",
            tmp_path / ".vml" / "refs" / "vml" / "areas" / "wa1.lock"]
    for lock in left:
        lock.write_text("0" * 40 + "\n")  # what a killed writer leaves: a whole or half id, no rename
    (guest / "second.txt").write_text("second\n")
    second = repo("commit", "-m", "second", "--json").json()["entry"]
    assert repo("log", "--json").json()[0]["id"] == second and second != first
    repo("push", "origin", "main")
    repo("checkout", "--force", first)
    assert not any(lock.exists() for lock in left)
    fsck_clean(repo, tmp_path / ".vml")
