#!/usr/bin/env python
"""Rebuild a study corpus of real English prose from Debian's documentation packages
(sift_ds.study.debian_corpus has the details):

    python launch/build_corpus.py --out debian_docs.jsonl.xz                      # every known package
    python launch/build_corpus.py --out linux_docs.jsonl.xz --packages linux-doc-6.1
    python launch/build_corpus.py --out c.jsonl.xz --debs ./debs                  # .deb files already here
    python launch/build_corpus.py --out c.jsonl.xz --manifest study/corpus.json   # a study's corpus, checked

Needs Debian's apt-get and dpkg (or --debs with dpkg). Prints the manifest it writes beside the corpus.
"""
import argparse
import json
import os
import sys
import tempfile

from sift_ds.study.debian_corpus import SOURCES, build, check_corpus, read_manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the corpus file to write (*.jsonl.xz)")
    parser.add_argument("--packages", nargs="+", default=None, help="Debian packages (default: all known)")
    parser.add_argument("--manifest", default="", help="a corpus manifest (a study's corpus.json): build its packages at "
                        "its versions, or only check --out when it exists; refuse a corpus whose sha256 differs")
    parser.add_argument("--debs", default="", help="a folder of .deb files to use instead of apt-get download")
    parser.add_argument("--workdir", default="", help="where packages are downloaded and unpacked (default: a temporary folder)")
    parser.add_argument("--min_chars", type=int, default=200, help="leave out documents shorter than this")
    args = parser.parse_args(argv)
    try:
        wanted = read_manifest(args.manifest) if args.manifest else None
        if wanted and args.packages:
            raise ValueError("--packages: the packages come from --manifest; give one or the other")
        if wanted and os.path.isfile(args.out):
            check_corpus(args.out, wanted, args.manifest)
            print(f"{args.out}: the corpus {args.manifest} describes (sha256 {wanted['sha256'][:12]}...)")
            return 0
        names = [p["package"] for p in wanted["packages"]] if wanted else args.packages or list(SOURCES)
        versions = {p["package"]: p["version"] for p in wanted["packages"]} if wanted else {}
        min_chars = int(wanted["min_chars"]) if wanted else args.min_chars
        with tempfile.TemporaryDirectory() as tmp:
            manifest = build(names, args.out, args.workdir or tmp, args.debs, min_chars, versions)
        if wanted:
            check_corpus(args.out, wanted, args.manifest)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    print(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
