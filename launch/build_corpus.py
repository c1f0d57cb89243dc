#!/usr/bin/env python
"""Rebuild a study corpus of real English prose from Debian's documentation packages
(sift_ds.study.debian_corpus has the details):

    python launch/build_corpus.py --out debian_docs.jsonl.xz                      # every known package
    python launch/build_corpus.py --out linux_docs.jsonl.xz --packages linux-doc-6.1
    python launch/build_corpus.py --out c.jsonl.xz --debs ./debs                  # .deb files already here

Needs Debian's apt-get and dpkg (or --debs with dpkg). Prints the manifest it writes beside the corpus.
"""
import argparse
import json
import sys
import tempfile

from sift_ds.study.debian_corpus import SOURCES, build


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the corpus file to write (*.jsonl.xz)")
    parser.add_argument("--packages", nargs="+", default=list(SOURCES), help="Debian packages (default: all known)")
    parser.add_argument("--debs", default="", help="a folder of .deb files to use instead of apt-get download")
    parser.add_argument("--workdir", default="", help="where packages are downloaded and unpacked (default: a temporary folder)")
    parser.add_argument("--min_chars", type=int, default=200, help="leave out documents shorter than this")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            manifest = build(args.packages, args.out, args.workdir or tmp, args.debs, args.min_chars)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    print(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
