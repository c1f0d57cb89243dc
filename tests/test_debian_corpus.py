"""launch/build_corpus.py / sift_ds.study.debian_corpus: a study corpus from Debian documentation
packages, checked on a .deb built here with dpkg-deb (no network): which files become documents,
HTML reduced to its visible text, short and repeated documents left out, the manifest, and the
refusals (the held-out Python documentation, a package without a SOURCES entry)."""
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys

import pytest

from launch_helpers import load_cli
from launcher import REPO
from sift_ds.study import debian_corpus

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs Debian's dpkg-deb")
PROSE = "Joins combine rows of two tables. " * 10
PAGE = ("<html><head><title>t</title><script>var x = 1;</script></head><body><nav>Prev Next</nav>"
        "<h1>Joins&nbsp;Between Tables</h1><p>Queries can access <b>several</b> tables at once.</p>"
        f"<p>{PROSE}</p><footer>Copyright</footer></body></html>")


def make_deb(folder, name, files, version="1.2-3"):
    root = folder / f"{name}_{version}_root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
                                             "Maintainer: t <t@example.org>\nDescription: test\n")
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data if isinstance(data, bytes) else data.encode())
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(folder / f"{name}_{version}_all.deb")],
                   check=True, capture_output=True)


def read(path):
    return [json.loads(line) for line in lzma.open(path, "rt", encoding="utf-8")]


def test_a_corpus_from_a_package(tmp_path, monkeypatch, capsys):
    import gzip
    debs = tmp_path / "debs"
    debs.mkdir()
    doc = "usr/share/doc/fake-doc"
    monkeypatch.setitem(debian_corpus.SOURCES, "fake-doc", (f"{doc}/**/*.html", f"{doc}/**/*.txt*"))
    make_deb(debs, "fake-doc", {
        f"{doc}/html/joins.html": PAGE,
        f"{doc}/html/print.html": PAGE + PROSE,  # the one-page print version: left out
        f"{doc}/guide/intro.txt": "Intro\n=====\n\n" + PROSE,
        f"{doc}/guide/copy.txt": "Intro\n=====\n\n" + PROSE,  # the same text again: left out
        f"{doc}/guide/short.txt": "too short",
        f"{doc}/guide/zipped.txt.gz": gzip.compress(("Zipped. " + PROSE).encode()),
        f"{doc}/images/logo.png": b"\x89PNG",
    })
    out = tmp_path / "corpus.jsonl.xz"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "build_corpus.py"), "--out", str(out),
                           "--packages", "fake-doc", "--debs", str(debs), "--workdir", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=300)
    # the command line runs in its own process, without the test's SOURCES entry: one line refusing it
    assert proc.returncode == 2 and "fake-doc: no entry in SOURCES" in proc.stderr.strip().splitlines()[-1]

    manifest = debian_corpus.build(["fake-doc"], str(out), str(tmp_path / "w"), debs=str(debs))
    docs = read(out)
    prefix = f"fake-doc/{doc}/"
    assert [d["id"] for d in docs] == [prefix + "guide/copy.txt", prefix + "guide/zipped.txt.gz",
                                       prefix + "html/joins.html"]  # sorted; intro.txt repeats copy.txt
    page = docs[2]["text"]
    assert not page.startswith("t\n") and "var x" not in page and "Prev Next" not in page  # head, script, nav
    assert "Copyright" not in page and "Joins Between Tables" in page
    assert "Queries can access several tables at once." in page
    assert docs[1]["text"].startswith("Zipped. Joins")
    assert manifest["packages"] == [{"package": "fake-doc", "version": "1.2-3", "documents": 3}]
    assert manifest["documents"] == 3 and manifest["characters"] == sum(len(d["text"]) for d in docs)
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert json.load(open(str(out) + ".json")) == manifest
    again = debian_corpus.build(["fake-doc"], str(tmp_path / "again.jsonl.xz"), str(tmp_path / "w2"), debs=str(debs))
    assert again["sha256"] == manifest["sha256"]  # the same packages give the same bytes

    # A newer version beside it: taken by default, and the manifest's version when it pins one.
    make_deb(debs, "fake-doc", {f"{doc}/guide/intro.txt": "Changed\n\n" + PROSE}, version="1.3-1")
    newer = debian_corpus.build(["fake-doc"], str(tmp_path / "newer.jsonl.xz"), str(tmp_path / "w3"), debs=str(debs))
    assert newer["packages"][0]["version"] == "1.3-1" and newer["sha256"] != manifest["sha256"]
    pinned = debian_corpus.build(["fake-doc"], str(tmp_path / "pinned.jsonl.xz"), str(tmp_path / "w4"), debs=str(debs),
                                 versions={"fake-doc": "1.2-3"})
    assert pinned["sha256"] == manifest["sha256"]

    # A study's manifest: a corpus with its bytes passes the check; another is refused in one line
    # naming the package whose version moved.
    study = tmp_path / "corpus.json"
    study.write_text(json.dumps(manifest))
    cli = load_cli(os.path.join(REPO, "launch", "build_corpus.py"))

    def build_corpus(*args):  # in process: (exit status, stdout, the last line of stderr)
        capsys.readouterr()
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, (err.strip().splitlines() or [""])[-1]
    code, printed, _ = build_corpus("--out", out, "--manifest", study)
    assert code == 0 and "the corpus" in printed
    code, _, last = build_corpus("--out", tmp_path / "newer.jsonl.xz", "--manifest", study)
    assert code == 2 and "newer.jsonl.xz: sha256" in last and "fake-doc 1.3-1 (wanted 1.2-3)" in last
    code, _, last = build_corpus("--out", tmp_path / "x.jsonl.xz", "--manifest", study, "--packages", "fake-doc")
    assert code == 2 and "give one or the other" in last
    study.write_text("{}")
    assert "no 'sha256'" in build_corpus("--out", out, "--manifest", study)[2]


@pytest.mark.parametrize("name,message", [
    ("python3.11-doc", "kept aside for independent checks"),
    ("python-django-doc", "kept aside for independent checks"),
    ("unknown-doc", "no entry in SOURCES"),
])
def test_refused_packages(tmp_path, name, message):
    with pytest.raises(ValueError, match=message):
        debian_corpus.build([name], str(tmp_path / "c.jsonl.xz"), str(tmp_path))
