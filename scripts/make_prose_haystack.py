"""Build kvbench/data/haystack/prose.txt.gz, the prose haystack of the generated RULER multi-value task.

RULER fills that haystack with Paul Graham's essays, which cannot be redistributed; kvbench ships English prose
it may: the prose paragraphs of the Python Language Reference as bundled with CPython (`pydoc_data.topics`, PSF
License 2.0, see kvbench/data/haystack/README.md). Code blocks, grammar rules and headings are dropped; what is
left is split into sentences, one per line. Run with the CPython the file was made with (3.11.7) to reproduce it
byte for byte:

    python scripts/make_prose_haystack.py
"""

import gzip
import pydoc_data.topics
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "kvbench" / "data" / "haystack" / "prose.txt.gz"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"])")


def prose_paragraphs(text: str) -> list[str]:
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if any(line.startswith(" ") for line in lines):  # code, grammar, tables
            continue
        paragraph = " ".join(line.strip() for line in lines).strip()
        if len(paragraph.split()) < 8 or set(paragraph) <= set("*=-~^ "):  # headings and rules
            continue
        paragraphs.append(re.sub(r"\s+", " ", paragraph))
    return paragraphs


def main() -> None:
    sentences = []
    for key in sorted(pydoc_data.topics.topics):
        for paragraph in prose_paragraphs(pydoc_data.topics.topics[key]):
            sentences += [s for s in SENTENCE_END.split(paragraph) if s.endswith((".", "!", "?"))]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(OUT, "wb", mtime=0) as f:  # mtime 0: the same bytes on every run
        f.write(("\n".join(sentences) + "\n").encode())
    print(
        f"{len(sentences)} sentences, {sum(len(s.split()) for s in sentences)} words from Python "
        f"{sys.version.split()[0]} -> {OUT}"
    )


if __name__ == "__main__":
    main()
