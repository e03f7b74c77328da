"""Summarise py-spy's collapsed stacks: share of samples spent inside each named function.

.venv/bin/python bench/collapse.py bench/results/profile-batching-on-web.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--skip-idle", action="store_true", default=True)
    args = parser.parse_args()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in Path(args.path).read_text().splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        if args.skip_idle and re.search(
            r"\b(wait|select|poll|epoll|accept|_recv_into)\b", frames[-1]
        ):
            continue
        total += n
        for name in {re.sub(r" \(.*?\)$", "", f) for f in frames}:
            inclusive[name] += n
    print(f"{total} busy samples")
    for name, n in inclusive.most_common(args.top):
        print(f"{100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
