"""mushishi-backup's overhead over bare restic on the same data, in the same run.

Six ways to back up the same source tree, each into repositories of its own, interleaved
so machine load hits them alike. Without an off-box copy:

* runner: `mushishi-backup run` (init, lock check (since 12-03 evening none for a local
  repository holding no lock file), backup, retention, restore verification
  of a 20-file sample, result files and metrics);
* bare-same: the same restic commands the runner issues, built by the same argv builders,
  run back to back from this script (what the runner costs over restic doing the same work);
* bare-minimal: `restic backup` + `restic forget --prune` only, what a cron line does
  (what verification and bookkeeping cost in total).

With one copy (`[[backup.copies]]`, a second repository on another directory: restic's
copy, forget and restore are the same for every backend, and the network is not what is
measured):

* runner+copy: `mushishi-backup run` with the copy (the above, and for the copy: open or
  create with the primary's chunker, lock check, `restic copy`, its retention, its
  snapshots read back, a 20-file restore sample from it; since 12-03 the copy's steps after
  `restic copy` run side by side with the primary's retention and restore sample, and the
  snapshots are read back by the retention's own `forget --json`; since 12-03 evening the
  copy's sample is picked from the primary's `restic ls`, the copy is not listed);
* same+copy: those restic commands, from the same builders, back to back (one after
  another, as the runner issued them before 12-03);
* backup+copy: `restic backup` + `restic copy` by hand, nothing else.

Each is measured on a first (full) backup and on an incremental one after 5% of the files
changed. Usage: `.venv/bin/python benchmarks/backup/bench_backup.py [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mushishi.services.backup.restic import Restic, parse_forget_kept

BINDIR = Path(sys.executable).parent
RESTIC = "/usr/bin/restic"
PASSWORD = "benchmark password"
SAMPLE = 20


def make_source(root: Path, rng: random.Random) -> list[Path]:
    files = []
    for index in range(2000):
        path = root / f"d{index % 40:02d}" / f"f{index:04d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(512, 8192)))
        files.append(path)
    for index in range(20):
        path = root / "large" / f"blob{index:02d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(1 << 20))
        files.append(path)
    return files


def touch_some(files: list[Path], rng: random.Random) -> None:
    for path in rng.sample(files, len(files) // 20):
        path.write_bytes(rng.randbytes(max(512, path.stat().st_size)))


def write_config(work: Path, source: Path, repo: Path, copy: Path | None = None) -> Path:
    config = work / f"{repo.name}.toml"
    copies = f'[[backup.copies]]\nrepository = "{copy}"\n' if copy is not None else ""
    config.write_text(f"""[backup]
restic = "{RESTIC}"
repository = "{repo}"
state_dir = "{work / (repo.name + '-state')}"
textfile_dir = "{work / (repo.name + '-textfile')}"
cache_dir = "{work / (repo.name + '-cache')}"
verify_sample_files = {SAMPLE}
[[backup.sets]]
path = "{source}"
reason = "benchmark"
{copies}""")
    return config


def env() -> dict[str, str]:
    # The copy shares the primary's password here (password_credential unset).
    return {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8",
            "MUSHISHI_CREDENTIAL_RESTIC_PASSWORD": PASSWORD, "RESTIC_PASSWORD": PASSWORD,
            "RESTIC_FROM_PASSWORD": PASSWORD}


def timed(argv: list[str], **kwargs: object) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env(), **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - started


def runner(config: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run([str(BINDIR / "mushishi-backup"), "--config", str(config), "run"],
                            capture_output=True, text=True, env=env())
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return elapsed


def list_files(restic: Restic, snapshot: str) -> list[str]:
    """`restic ls` of the snapshot: its regular files."""
    listing = subprocess.run(restic.ls(snapshot), check=True, capture_output=True, text=True,
                             env=env()).stdout
    return [json.loads(line)["path"] for line in listing.splitlines()
            if '"type":"file"' in line]


def restore_sample(restic: Restic, snapshot: str, work: Path, seed: int,
                   files: list[str] | None = None) -> None:
    """A restore of a same-sized sample of `files` (else `restic ls` of the snapshot), as
    verification."""
    if files is None:
        files = list_files(restic, snapshot)
    sample = random.Random(seed).sample(files, SAMPLE)
    target = Path(tempfile.mkdtemp(dir=work))
    subprocess.run(restic.restore(snapshot, str(target), sample), check=True,
                   capture_output=True, env=env())
    shutil.rmtree(target)


def bare_same(restic: Restic, source: Path, first: bool, work: Path,
              copy: Restic | None = None) -> float:
    """The runner's restic commands, from the same builders, with a same-sized sample (and,
    with `copy`, its copy steps in the runner's order: before the primary's retention)."""
    started = time.perf_counter()
    # The runner opens each repository by listing its locks (and creates it when that fails);
    # since 12-03 evening not the box's own local repository when it holds no lock file.
    if first:
        subprocess.run(restic.list_locks(), capture_output=True, env=env())
        subprocess.run(restic.init(), check=True, capture_output=True, env=env())
    backup = subprocess.run(restic.backup([str(source)], tags=["mushishi"]), check=True,
                            capture_output=True, text=True, env=env())
    snapshot = json.loads(backup.stdout.splitlines()[-1])["snapshot_id"]
    listed = None
    if copy is not None:
        # The runner picks both samples from one listing of the primary (the copy holds the
        # same tree), since 12-03 evening.
        listed = list_files(restic, snapshot)
        probe = subprocess.run(copy.list_locks(), capture_output=True, env=env())
        if probe.returncode != 0:
            subprocess.run(copy.init_copy_of(restic), check=True, capture_output=True,
                           env=env())
        subprocess.run(copy.copy_from(restic, tags=["mushishi"]), check=True,
                       capture_output=True, env=env())
        # The copy's snapshots are read back from its forget's JSON, as the runner does.
        kept = subprocess.run(copy.forget_prune(keep_daily=7, keep_weekly=4, keep_monthly=12,
                                                tags=["mushishi"]),
                              check=True, capture_output=True, text=True, env=env()).stdout
        copied = next(s.short_id for s in parse_forget_kept(kept)
                      if s.original and s.original.startswith(snapshot))
        restore_sample(copy, copied, work, 2, listed)
    subprocess.run(restic.forget_prune(keep_daily=7, keep_weekly=4, keep_monthly=3,
                                       tags=["mushishi"]),
                   check=True, capture_output=True, env=env())
    restore_sample(restic, snapshot, work, 1, listed)
    return time.perf_counter() - started


def bare_minimal(repo: Path, source: Path, first: bool) -> float:
    base = [RESTIC, "--repo", str(repo), "--cache-dir", str(repo) + "-cache"]
    started = time.perf_counter()
    if first:
        subprocess.run([*base, "init"], check=True, capture_output=True, env=env())
    subprocess.run([*base, "backup", "--tag", "mushishi", str(source)], check=True,
                   capture_output=True, env=env())
    subprocess.run([*base, "forget", "--prune", "--keep-daily", "7", "--keep-weekly", "4",
                    "--keep-monthly", "3", "--tag", "mushishi"], check=True,
                   capture_output=True, env=env())
    return time.perf_counter() - started


def backup_and_copy(repo: Path, copy: Path, source: Path, first: bool) -> float:
    """`restic backup` and `restic copy` by hand: nothing else."""
    base = [RESTIC, "--repo", str(repo), "--cache-dir", str(repo) + "-cache"]
    copy_base = [RESTIC, "--repo", str(copy), "--cache-dir", str(repo) + "-cache"]
    started = time.perf_counter()
    if first:
        subprocess.run([*base, "init"], check=True, capture_output=True, env=env())
        subprocess.run([*copy_base, "init", "--copy-chunker-params", "--from-repo", str(repo)],
                       check=True, capture_output=True, env=env())
    subprocess.run([*base, "backup", "--tag", "mushishi", str(source)], check=True,
                   capture_output=True, env=env())
    subprocess.run([*copy_base, "copy", "--from-repo", str(repo)], check=True,
                   capture_output=True, env=env())
    return time.perf_counter() - started


NAMES = ("runner", "bare-same", "bare-minimal", "runner+copy", "same+copy", "backup+copy")


def table(results: dict[str, dict[str, list[float]]], rounds: int, title: str,
          names: tuple[str, str, str], headers: tuple[str, ...]) -> None:
    """Medians of the runner and two baselines per phase, and the runner's ratios."""
    print()
    print(f"{title:12s} {headers[0]:>8s} {headers[1]:>10s} {headers[2]:>9s} "
          f"{headers[3]:>12s} {headers[4]:>11s}   (medians of {rounds}, seconds)")
    for phase, by_name in results.items():
        runner_s, first_s, second_s = (statistics.median(by_name[n]) for n in names)
        print(f"{phase:12s} {runner_s:8.2f} {first_s:10.2f} {second_s:9.2f} "
              f"{runner_s / first_s:12.2f} {runner_s / second_s:11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {
        phase: {name: [] for name in NAMES} for phase in ("full", "incremental")}
    for round_number in range(args.rounds):
        work = Path(tempfile.mkdtemp(prefix="mushishi-bench-backup-", dir="/var/tmp"))
        try:
            rng = random.Random(round_number)
            source = work / "source"
            files = make_source(source, rng)
            repos = {name: work / name for name in (
                "runner", "same", "minimal", "runner-c", "runner-c-copy", "same-c",
                "same-c-copy", "hand", "hand-copy")}
            config = write_config(work, source, repos["runner"])
            config_copy = write_config(work, source, repos["runner-c"], repos["runner-c-copy"])
            same = Restic(RESTIC, str(repos["same"]), None, str(work / "same-cache"))
            same_c = Restic(RESTIC, str(repos["same-c"]), None, str(work / "same-c-cache"))
            same_c_copy = Restic(RESTIC, str(repos["same-c-copy"]), None,
                                 str(work / "same-c-cache"))
            order = list(NAMES)
            random.Random(round_number).shuffle(order)
            for phase in ("full", "incremental"):
                if phase == "incremental":
                    touch_some(files, rng)
                first = phase == "full"
                for name in order:
                    if name == "runner":
                        seconds = runner(config)
                    elif name == "bare-same":
                        seconds = bare_same(same, source, first, work)
                    elif name == "bare-minimal":
                        seconds = bare_minimal(repos["minimal"], source, first)
                    elif name == "runner+copy":
                        seconds = runner(config_copy)
                    elif name == "same+copy":
                        seconds = bare_same(same_c, source, first, work, same_c_copy)
                    else:
                        seconds = backup_and_copy(repos["hand"], repos["hand-copy"], source,
                                                  first)
                    results[phase][name].append(seconds)
                    print(f"round {round_number} {phase:11s} {name:12s} {seconds:6.2f} s",
                          flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    table(results, args.rounds, "phase", ("runner", "bare-same", "bare-minimal"),
          ("runner", "bare-same", "bare-min", "runner/same", "runner/min"))
    table(results, args.rounds, "with a copy", ("runner+copy", "same+copy", "backup+copy"),
          ("runner", "same", "by hand", "runner/same", "runner/hand"))
    print(f"\nsource: 2000 files of 0.5-8 KiB + 20 files of 1 MiB; cpus={os.cpu_count()}; "
          f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
