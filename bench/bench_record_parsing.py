"""Parsing published rec-tuning records (`parse_rec_input`) against the history length: the time per record
must grow linearly (issue 21: the former parser took 3.6 s at 1,000 items and 29 s at 2,000).

    python bench/bench_record_parsing.py [--lengths 10,100,1000,2000,5000,10000,20000] [--repeats 3]

Each history mixes the hardest titles of tests/test_record_parsing.py (commas, quotes, the list separator inside
a title, BookCrossing's and Amazon's artefacts) with plain ones, two thirds liked; movie and book records, parsed
without and with a catalog (item id -> text). Prints the best of `--repeats` seconds per record, and
microseconds per item (flat when the cost is linear). Every parse is checked to give the history back.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tlrec_utils import prompts  # noqa: E402
from tlrec_utils.data.record_parsing import parse_rec_input  # noqa: E402

HARD = {
    "movie": ["Ice Storm, The (1997)", 'Brazil: The "Love Conquers All" Version (1985)', 'Say "Yes", "No" (1999)',
              "Yes, No, Maybe, (2001)"],
    "book": ['"\\O\\" Is for Outlaw"" written by SUE GRAFTON', '"Hello, World: "Quoted" Part, Two" written by Smith, '
             'John', '"Rick Steves\' Rome 2004" written by Rick Steves\', \'Gene Openshaw',
             '"A fools errand," written by Robin Hobb'],
}


def item_text(kind: str, n: int) -> str:
    if n % 5 == 0:
        return HARD[kind][(n // 5) % len(HARD[kind])]
    return f"Title {n}, Part {n % 7} ({1950 + n % 60})" if kind == "movie" else f'"Book {n}" written by Author {n}'


def record(kind: str, length: int) -> tuple[str, list[str]]:
    items = [item_text(kind, n) for n in range(length)]
    liked = [t for n, t in enumerate(items) if n % 3]
    disliked = [t for n, t in enumerate(items) if not n % 3]
    return prompts.rec_input(liked, disliked, item_text(kind, length + 1), kind), liked + disliked


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="10,100,1000,2000,5000,10000,20000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{'kind':5} {'items':>6} {'catalog':>8} {'s/record':>9} {'us/item':>8}")
    for kind in ("movie", "book"):
        for length in map(int, args.lengths.split(",")):
            text, expected = record(kind, length)
            for catalog in (None, {str(n): item_text(kind, n) for n in range(length + 2)}):
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    parsed = parse_rec_input(text, catalog=catalog)
                    times.append(time.perf_counter() - start)
                assert parsed is not None and [h["title"] for h in parsed["history"]] == expected, (kind, length)
                best = min(times)
                print(f"{kind:5} {length:6d} {'yes' if catalog else 'no':>8} {best:9.4f} {1e6 * best / length:8.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
