import ast
import sys
from pathlib import Path

import shared_contract

ALLOWED = set(sys.stdlib_module_names) | {"pydantic", "shared_contract"}


def imported_top_level_names(source: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_shared_contract_depends_only_on_pydantic_and_the_stdlib():
    package = Path(shared_contract.__file__).parent

    for source in package.glob("*.py"):
        assert imported_top_level_names(source) <= ALLOWED, source.name
