"""Print setup.py's requirement for one package, range included: `python .ci/requirement.py setup.py torch`
prints torch's range as setup.py writes it. make test-latest and make test-oldest install torch from it
(the newest release in it, or its floor) before the rest (DeepSpeed's source archive builds against the
installed torch), so that the range has one home, setup.py."""
import ast
import re
import sys


def requirement(setup_py: str, package: str) -> str:
    tree = ast.parse(open(setup_py, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            for item in ast.literal_eval(node.value):
                if re.split(r"[<>=!~;\[ ]", item, maxsplit=1)[0].lower() == package.lower():
                    return item
    raise SystemExit(f"{setup_py}: install_requires names no {package!r}")


if __name__ == "__main__":
    print(requirement(*sys.argv[1:3]))
