"""``python -m pytest_resilience.scenarios schema [--out FILE]``: the JSON Schema of
scenario files (editors: point yaml.schemas / ``# yaml-language-server: $schema=``
at it); ``check FILE...``: validate scenario files without running them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_resilience.scenarios",
                                     description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    schema = sub.add_parser("schema", help="print (or write) the JSON Schema")
    schema.add_argument("--out", type=Path, help="write it to this file")
    check = sub.add_parser("check", help="validate scenario files")
    check.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)

    if args.command == "schema":
        from pytest_resilience.scenarios.schema import json_schema

        text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
        if args.out is None:
            sys.stdout.write(text)
        else:
            args.out.write_text(text)
        return 0

    from pytest_resilience.scenarios.collect import format_errors
    from pytest_resilience.scenarios.loader import ScenarioSyntaxError, load_documents
    from pytest_resilience.scenarios.schema import Scenario, ValidationError

    bad = 0
    for path in args.files:
        try:
            documents = load_documents(path)
        except ScenarioSyntaxError as exc:
            print(f"{path}:{exc.line}:{exc.column}: {exc.message}")
            bad += 1
            continue
        for document in documents:
            try:
                Scenario.model_validate(document.data)
            except ValidationError as exc:
                print(format_errors(path, document, exc))
                bad += 1
    if not bad:
        print(f"{len(args.files)} file(s) OK")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
