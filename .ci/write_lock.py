"""Write requirements/lock.txt from an environment that passed: `make lock` (after `make test-latest`)
takes the newest-releases venv's exact versions, pip's own tools included. The header comment of the
current lock is kept; torch's local build label (+cpu, +cu128) is dropped, so that the pin matches
every build of that release."""
import argparse
import importlib.metadata
import re

TOOLS = ("pip", "setuptools", "wheel")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lock", default="requirements/lock.txt")
    args = parser.parse_args()
    header = [line for line in open(args.lock, encoding="utf-8") if line.startswith("#")]
    pins = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if re.sub(r"[-_.]+", "-", name).lower() != "sift-ds":
            pins[name] = dist.version.split("+", 1)[0]
    tools = [f"{t}=={pins.pop(t)}" for t in TOOLS if t in pins]
    rest = [f"{name}=={pins[name]}" for name in sorted(pins, key=str.lower)]
    with open(args.lock, "w", encoding="utf-8") as f:
        f.write("".join(header) + "\n".join(tools + rest) + "\n")
    print(f"{args.lock}: {len(tools) + len(rest)} pins")


if __name__ == "__main__":
    main()
