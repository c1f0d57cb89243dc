"""Study corpora of real English prose, rebuilt from Debian's documentation packages.

    python launch/build_corpus.py --out linux_docs.jsonl.xz --packages linux-doc-6.1
    python launch/build_corpus.py --out debian_docs.jsonl.xz        # every package of SOURCES

Each package is fetched with ``apt-get download`` (or taken from ``--debs``, a folder of ``.deb``
files), unpacked with ``dpkg -x``, and the files its entry in ``SOURCES`` names become documents:
reStructuredText and plain text as they are, POD as it is, HTML as its visible text (scripts,
styles and navigation dropped). The output is xz-compressed JSON lines, one document per line,
``{"id": "<package>/<path in the package>", "text": ...}``, sorted by id, without documents under
``min_chars`` characters or repeated texts; a manifest beside it records every package's version,
the document and character counts and the output's sha256. Rebuilt from the same package versions,
the output is the same, byte for byte. The Python documentation is refused: it is kept aside for
independent checks.
"""
from __future__ import annotations

import fnmatch
import glob
import gzip
import hashlib
import html.parser
import json
import lzma
import os
import re
import subprocess
from dataclasses import dataclass
from typing import Dict, Iterator, List, Sequence, Tuple

# Package -> globs (inside the unpacked package) of the files that are prose.
# English only; the books and guides of a language, not its generated API reference.
RUST_BOOKS = ("book", "reference", "nomicon", "edition-guide", "embedded-book", "rust-by-example", "rustc",
              "rustdoc", "unstable-book")
SOURCES: Dict[str, Tuple[str, ...]] = {
    "linux-doc-6.1": ("usr/share/doc/linux-doc-6.1/html/_sources/**/*.txt",),
    "postgresql-doc-15": ("usr/share/doc/postgresql-doc-15/html/*.html",),
    "perl-doc": ("usr/share/perl/*/pod/*.pod",),
    "git-doc": ("usr/share/doc/git-doc/**/*.txt",),
    "debian-handbook": ("usr/share/doc/debian-handbook/html/en-US/*.html",),
    "rust-doc": tuple(f"usr/share/doc/rust-doc/html/{book}/**/*.html" for book in RUST_BOOKS),
    "apache2-doc": ("usr/share/doc/apache2-doc/manual/en/**/*.html",),
    "cmake-doc": ("usr/share/doc/cmake-data/html/_sources/**/*.txt",),
    "erlang-doc": ("usr/share/doc/erlang-doc/**/*.html",),
    "sqlite3-doc": ("usr/share/doc/sqlite3/**/*.html",),
    "nodejs-doc": ("usr/share/doc/nodejs/api/*.html",),
    "debian-policy": ("usr/share/doc/debian-policy/*.txt.gz",),
    "developers-reference": ("usr/share/developers-reference/_sources/*.txt",),
}
# Pages that repeat the others (mdBook's one-page print version) or hold no prose.
EXCLUDED_NAMES = {"print.html", "404.html", "toc.html", "search.html", "genindex.html", "index-all.html"}
HELD_OUT = re.compile(r"^python[0-9.]*-doc$|^python-.*-doc$")  # kept aside for independent checks
SKIPPED_TAGS = {"script", "style", "head", "nav", "header", "footer"}


class _VisibleText(html.parser.HTMLParser):
    """The text a browser shows: block elements end lines, skipped elements and their content drop."""

    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "dt", "dd", "table",
              "section", "blockquote"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: List[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in SKIPPED_TAGS:
            self.skipping += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in SKIPPED_TAGS:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def html_text(markup: str) -> str:
    """The visible text of an HTML page, one paragraph per line, runs of blanks collapsed."""
    parser = _VisibleText()
    parser.feed(markup)
    parser.close()
    lines = (re.sub(r"[ \t\r\f\v\u00a0]+", " ", line).strip() for line in "".join(parser.parts).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def read_document(path: str) -> str:
    """A file's text: ``.gz`` decompressed, HTML reduced to its visible text, undecodable bytes replaced."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    name = path[:-3] if path.endswith(".gz") else path
    return html_text(text) if name.endswith((".html", ".htm")) else text.strip()


@dataclass
class Package:
    name: str
    version: str
    root: str  # where it is unpacked


def check_packages(names: Sequence[str]) -> None:
    for name in names:
        if HELD_OUT.match(name):
            raise ValueError(f"--packages {name}: the Python documentation is kept aside for independent checks")
        if name not in SOURCES:
            raise ValueError(f"--packages {name}: no entry in SOURCES says which of its files are prose "
                             f"(known: {', '.join(sorted(SOURCES))})")


def unpack(name: str, workdir: str, debs: str = "") -> Package:
    """``name``'s .deb (from ``debs``, else ``apt-get download`` into ``workdir``), unpacked under ``workdir``."""
    pattern = os.path.join(debs or workdir, f"{name}_*.deb")
    if not glob.glob(pattern):
        if debs:
            raise FileNotFoundError(f"--debs {debs}: no {name}_*.deb")
        subprocess.run(["apt-get", "download", name], cwd=workdir, check=True, capture_output=True)
    deb = sorted(glob.glob(pattern))[-1]
    root = os.path.join(workdir, "unpacked", name)
    os.makedirs(root, exist_ok=True)
    subprocess.run(["dpkg", "-x", deb, root], check=True)
    version = subprocess.run(["dpkg-deb", "-f", deb, "Version"], check=True, capture_output=True,
                             text=True).stdout.strip()
    return Package(name, version, root)


def documents(package: Package, min_chars: int) -> Iterator[Tuple[str, str]]:
    """(id, text) of every prose file of ``package`` with at least ``min_chars`` characters."""
    paths = set()
    for pattern in SOURCES[package.name]:
        paths.update(glob.glob(os.path.join(package.root, pattern), recursive=True))
    for path in sorted(p for p in paths if os.path.isfile(p) and os.path.basename(p) not in EXCLUDED_NAMES):
        text = read_document(path)
        if len(text) >= min_chars:
            yield f"{package.name}/{os.path.relpath(path, package.root)}", text


def build(names: Sequence[str], out: str, workdir: str, debs: str = "", min_chars: int = 200) -> dict:
    """Write the corpus of ``names`` to ``out`` (``.jsonl.xz``) and its manifest to ``out + '.json'``;
    return the manifest."""
    check_packages(names)
    if not fnmatch.fnmatch(out, "*.jsonl.xz"):
        raise ValueError(f"--out {out}: the corpus is written as xz-compressed JSON lines (*.jsonl.xz)")
    os.makedirs(workdir, exist_ok=True)
    packages, docs, seen = [], [], set()
    for name in names:
        package = unpack(name, workdir, debs)
        count = 0
        for doc_id, text in documents(package, min_chars):
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                docs.append((doc_id, text))
                count += 1
        packages.append({"package": name, "version": package.version, "documents": count})
    docs.sort()
    with lzma.open(out, "wt", encoding="utf-8") as f:
        for doc_id, text in docs:
            f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
    with open(out, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    manifest = {"file": os.path.basename(out), "sha256": sha, "documents": len(docs),
                "characters": sum(len(t) for _, t in docs), "min_chars": min_chars, "packages": packages}
    with open(out + ".json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return manifest
