"""Documentation that code points at exists: every `method.md §N` reference names a real section."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_method_reference_resolves():
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", (REPO / "docs" / "method.md").read_text(), re.M))
    assert {"1", "2", "2.1", "2.3", "3", "4", "5", "6"} <= headings
    files = [p for p in REPO.rglob("*") if p.suffix in (".py", ".md", ".yaml") and ".venv" not in p.parts
             and p.is_file() and "site-packages" not in p.parts]
    cited = set()
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            if "method.md" in line:
                # "method.md §2.1", "method.md) §4", "(docs/method.md §2, distributed per §3)"
                cited |= {(path.name, ref) for ref in re.findall(r"§(\d+(?:\.\d+)?)", line)}
    missing = sorted((name, ref) for name, ref in cited if ref.rstrip(".") not in headings)
    assert cited and not missing, missing
