#!/usr/bin/env python3
"""Parses a /metrics answer with the Prometheus client's own OpenMetrics parser.

Reads the text on standard input; prints JSON: {"families": {name: type},
"samples": [{"name", "labels", "value"}]}. A text the parser refuses exits with 1.
"""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main() -> int:
    text = sys.stdin.read()
    families = {}
    samples = []
    try:
        for family in text_string_to_metric_families(text):
            families[family.name] = family.type
            for sample in family.samples:
                samples.append(
                    {"name": sample.name, "labels": dict(sample.labels), "value": sample.value}
                )
    except Exception as error:  # the parser raises ValueError and others
        print(f"not OpenMetrics text: {error}", file=sys.stderr)
        return 1
    json.dump({"families": families, "samples": samples}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
