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

A study keeps the manifest of its corpus; ``launch/build_corpus.py --manifest corpus.json`` rebuilds
that corpus (the manifest's packages, at its versions) and refuses one whose sha256 differs.
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
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

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


def unpack(name: str, workdir: str, debs: str = "", version: str = "") -> Package:
    """``name``'s .deb (from ``debs``, else ``apt-get download`` into ``workdir``; at ``version``
    when given), unpacked under ``workdir``."""
    pattern = os.path.join(debs or workdir, f"{name}_*.deb")
    if not glob.glob(pattern):
        if debs:
            raise FileNotFoundError(f"--debs {debs}: no {name}_*.deb")
        wanted = f"{name}={version}" if version else name
        proc = subprocess.run(["apt-get", "download", wanted], cwd=workdir, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ValueError(f"apt-get download {wanted} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    debs_found = sorted(glob.glob(pattern))
    if version:  # the file names spell the epoch's ':' as '%3a'
        debs_found = [d for d in debs_found if _deb_version(d) == version] or debs_found
    deb = debs_found[-1]
    root = os.path.join(workdir, "unpacked", name)
    os.makedirs(root, exist_ok=True)
    subprocess.run(["dpkg", "-x", deb, root], check=True)
    return Package(name, _deb_version(deb), root)


def _deb_version(deb: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", deb, "Version"], check=True, capture_output=True, text=True).stdout.strip()


def documents(package: Package, min_chars: int) -> Iterator[Tuple[str, str]]:
    """(id, text) of every prose file of ``package`` with at least ``min_chars`` characters."""
    paths = set()
    for pattern in SOURCES[package.name]:
        paths.update(glob.glob(os.path.join(package.root, pattern), recursive=True))
    for path in sorted(p for p in paths if os.path.isfile(p) and os.path.basename(p) not in EXCLUDED_NAMES):
        text = read_document(path)
        if len(text) >= min_chars:
            yield f"{package.name}/{os.path.relpath(path, package.root)}", text


def build(names: Sequence[str], out: str, workdir: str, debs: str = "", min_chars: int = 200,
          versions: Optional[Dict[str, str]] = None) -> dict:
    """Write the corpus of ``names`` to ``out`` (``.jsonl.xz``) and its manifest to ``out + '.json'``;
    return the manifest. ``versions`` (package -> version) pins what is downloaded."""
    check_packages(names)
    versions = versions or {}
    if not fnmatch.fnmatch(out, "*.jsonl.xz"):
        raise ValueError(f"--out {out}: the corpus is written as xz-compressed JSON lines (*.jsonl.xz)")
    os.makedirs(workdir, exist_ok=True)
    packages, docs, seen = [], [], set()
    for name in names:
        package = unpack(name, workdir, debs, versions.get(name, ""))
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


def read_manifest(path: str) -> dict:
    """A corpus manifest (what ``build`` wrote beside a corpus); ValueError naming the file and key."""
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"--manifest {path}: not a readable corpus manifest ({error})") from None
    for key in ("sha256", "min_chars", "packages"):
        if key not in manifest:
            raise ValueError(f"--manifest {path}: no {key!r}")
    return manifest


def check_corpus(out: str, manifest: dict, manifest_path: str) -> None:
    """Refuse ``out`` unless its bytes are the ones ``manifest`` records, naming the package versions
    that differ when ``out``'s own manifest is beside it."""
    with open(out, "rb") as f:
        have = hashlib.sha256(f.read()).hexdigest()
    if have == manifest["sha256"]:
        return
    why = ""
    if os.path.isfile(out + ".json"):
        built = {p["package"]: p["version"] for p in read_manifest(out + ".json")["packages"]}
        moved = [f"{p['package']} {built.get(p['package'], 'missing')} (wanted {p['version']})"
                 for p in manifest["packages"] if built.get(p["package"]) != p["version"]]
        why = f"; versions that differ: {', '.join(moved)}" if moved else ""
    raise ValueError(f"{out}: sha256 {have[:12]}..., but {manifest_path} records {manifest['sha256'][:12]}...{why} "
                     f"(rebuild it from the recorded versions, e.g. with --debs, or start the study in a new folder)")
