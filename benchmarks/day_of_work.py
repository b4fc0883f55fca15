"""'A day of work' on a copy of the benchmark guest tree, the same every time (seeded):
300 new small files in a home directory, 100 edited configuration files, 50 deleted files,
one new 200 MB file, and 1 MB rewritten in the middle of an existing 100 MB file.

Usage: python3 day_of_work.py ROOT
"""

from __future__ import annotations

import os
import random
import sys

MiB = 1024 * 1024
BIG_FILE = "home/physicist/results/histograms.root"  # made by benchmarks/dataset, 100 MB


def regular_files(top: str, keep=lambda name: True) -> list[str]:
    found = []
    for directory, _dirs, names in os.walk(top):
        for name in names:
            path = os.path.join(directory, name)
            if keep(name) and os.path.isfile(path) and not os.path.islink(path):
                found.append(path)
    return sorted(found)


def day_of_work(root: str) -> None:
    rng = random.Random(5)
    home = os.path.join(root, "home/physicist/analysis")
    os.makedirs(home, exist_ok=True)
    for i in range(300):
        with open(os.path.join(home, f"note{i:03d}.txt"), "w") as note:
            note.write(f"run {i}: " + " ".join(str(rng.random()) for _ in range(20)) + "\n")
    configs = regular_files(os.path.join(root, "etc"), lambda name: name.endswith(".conf"))
    for path in rng.sample(configs, min(100, len(configs))):
        with open(path, "a") as config:
            config.write(f"# edited {rng.random()}\n")
    for path in rng.sample(regular_files(os.path.join(root, "usr/share/doc")), 50):
        os.unlink(path)
    with open(os.path.join(root, "home/physicist/results/fit-output.dat"), "wb") as output:
        for _ in range(200):
            output.write(rng.randbytes(MiB))
    with open(os.path.join(root, BIG_FILE), "r+b") as big:
        big.seek(50 * MiB)
        big.write(rng.randbytes(MiB))


def make_big_file(path: str) -> None:
    rng = random.Random(100)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as big:
        for _ in range(100):
            big.write(rng.randbytes(MiB))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--big-file"]:
        make_big_file(os.path.join(sys.argv[2], BIG_FILE))
    else:
        day_of_work(sys.argv[1])
