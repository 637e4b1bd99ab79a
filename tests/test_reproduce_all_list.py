"""scripts/reproduce_all runs every showcase: each config of configs/ with a showcase figure
(output.showcase, or a sweep file's showcase key) is in its SHOWCASES list, and nothing else is."""
import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_reproduce_all_lists_every_showcase_config():
    with open(os.path.join(ROOT, "scripts", "reproduce_all")) as f:
        text = f.read()
    listed = set(re.search(r"SHOWCASES=\(([^)]*)\)", text).group(1).split())
    with_showcase = set()
    for name in os.listdir(os.path.join(ROOT, "configs")):
        if not name.endswith(".yaml") or name == "reference.yaml":
            continue
        with open(os.path.join(ROOT, "configs", name)) as f:
            cfg = yaml.safe_load(f) or {}
        if cfg.get("showcase") or (cfg.get("output") or {}).get("showcase"):
            with_showcase.add(name[: -len(".yaml")])
    assert listed == with_showcase
