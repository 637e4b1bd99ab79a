"""Print the pytest node ids of the tests a junit XML report shows skipped for a missing module
(pytest.importorskip: "could not import ...", or a reason saying "pip install 'dlnsim[extra]'"), one per line."""
import os
import re
import sys
import xml.etree.ElementTree as ET

MISSING = re.compile(r"could not import|No module named|pip install (-e )?'(dlnsim|\.)\[")


def node_id(classname: str, name: str) -> str:
    if not classname:  # a module skipped at collection: name is its dotted path
        return name.replace(".", "/") + ".py"
    parts = classname.split(".")
    for k in range(len(parts), 0, -1):
        path = os.path.join(*parts[:k]) + ".py"
        if os.path.exists(path):
            return "::".join([path.replace(os.sep, "/")] + parts[k:] + [name])
    return "::".join([classname, name])


def main(report: str) -> None:
    ids = []
    for case in ET.parse(report).getroot().iter("testcase"):
        skip = case.find("skipped")
        if skip is not None and MISSING.search(skip.get("message", "") + (skip.text or "")):
            ids.append(node_id(case.get("classname", ""), case.get("name", "")))
    for i in dict.fromkeys(ids):
        print(i)


if __name__ == "__main__":
    main(sys.argv[1])
