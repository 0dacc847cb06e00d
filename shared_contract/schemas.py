"""Generated JSON Schemas of the contract, the committed copies, and the checks CI runs.

``--check`` fails when a committed schema differs from the models (drift) and when a change breaks
compatibility (a property removed or newly required) without a major bump of SCHEMA_VERSION. CI can
point ``--against`` at the previous release's schema folder to check compatibility across releases.
"""

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from shared_contract.accept import (
    AcceptRequest,
    AcceptResponseData,
    ChildInfo,
    ClusterPgBlock,
    Endpoint,
    GrantInfo,
)
from shared_contract.enroll import EnrollRequest, EnrollResponseData
from shared_contract.envelope import ErrorEnvelope, PageMeta, SuccessEnvelope
from shared_contract.first_run import FirstRunResult, StandbyInfo
from shared_contract.heartbeat import HeartbeatRequest, HeartbeatResponseData
from shared_contract.payload import SpawnPayload
from shared_contract.renew import RenewRequest, RenewResponseData
from shared_contract.replication import ReplicationCredential
from shared_contract.version import SCHEMA_VERSION

SCHEMA_DIR = Path(__file__).parent / "schemas"
VERSION_KEY = "x-schema-version"

CONTRACT_MODELS: dict[str, type[BaseModel]] = {
    "spawn_payload": SpawnPayload,
    "endpoint": Endpoint,
    "child_info": ChildInfo,
    "accept_request": AcceptRequest,
    "grant_info": GrantInfo,
    "cluster_pg_block": ClusterPgBlock,
    "accept_response": AcceptResponseData,
    "enroll_request": EnrollRequest,
    "enroll_response": EnrollResponseData,
    "heartbeat_request": HeartbeatRequest,
    "heartbeat_response": HeartbeatResponseData,
    "replication_credential": ReplicationCredential,
    "renew_request": RenewRequest,
    "renew_response": RenewResponseData,
    "standby_info": StandbyInfo,
    "first_run_result": FirstRunResult,
    "success_envelope": SuccessEnvelope[Any],
    "page_meta": PageMeta,
    "error_envelope": ErrorEnvelope,
}

Schema = dict[str, Any]


def schema_of(model: type[BaseModel]) -> Schema:
    """Return the JSON Schema of one model, stamped with SCHEMA_VERSION."""
    return {**model.model_json_schema(), VERSION_KEY: SCHEMA_VERSION}


def generate() -> dict[str, Schema]:
    """Return the schema of every contract model, by registry name."""
    return {name: schema_of(model) for name, model in CONTRACT_MODELS.items()}


def render(schema: Schema) -> str:
    """Return the committed text of a schema: sorted keys, indent 2, trailing newline."""
    return json.dumps(schema, sort_keys=True, indent=2) + "\n"


def write(directory: Path = SCHEMA_DIR) -> None:
    """Regenerate <name>.json for every model and remove schema files that have no model."""
    directory.mkdir(parents=True, exist_ok=True)
    schemas = generate()
    for stale in directory.glob("*.json"):
        if stale.stem not in schemas:
            stale.unlink()
    for name, schema in schemas.items():
        (directory / f"{name}.json").write_text(render(schema), encoding="utf-8")


def check(directory: Path = SCHEMA_DIR) -> list[str]:
    """Return one message per committed schema file that is missing, stale or out of date."""
    schemas = generate()
    problems = [
        f"stale schema file {path.name}: no model {path.stem!r}"
        for path in sorted(directory.glob("*.json"))
        if path.stem not in schemas
    ]
    for name, schema in schemas.items():
        path = directory / f"{name}.json"
        if not path.is_file():
            problems.append(f"missing schema file {path.name}")
        elif path.read_text(encoding="utf-8") != render(schema):
            problems.append(f"schema file {path.name} differs from the model {name!r}")
    return problems


def _resolve(node: Schema, root: Schema) -> Schema:
    """Follow a local ``#/$defs/...`` reference."""
    ref = node.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/$defs/"):
        return node
    return _resolve(root.get("$defs", {}).get(ref.removeprefix("#/$defs/"), {}), root)


def _objects(node: Schema, root: Schema, path: str) -> Iterator[tuple[str, Schema]]:
    """Yield (path, object schema) for each object reachable without entering properties."""
    node = _resolve(node, root)
    if "properties" in node:
        yield path, node
    for branch in (*node.get("anyOf", ()), *node.get("oneOf", ()), *node.get("allOf", ())):
        yield from _objects(branch, root, path)
    for key, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        if isinstance(node.get(key), dict):
            yield from _objects(node[key], root, path + suffix)


def _types(node: Schema, root: Schema) -> set[str] | None:
    """The JSON types a property accepts, or None when it accepts anything."""
    node = _resolve(node, root)
    branches = [*node.get("anyOf", ()), *node.get("oneOf", ())]
    if branches:
        found: set[str] = set()
        for branch in branches:
            types = _types(branch, root)
            if types is None:
                return None
            found |= types
        return found
    kind = node.get("type")
    if kind is None:
        return {"object"} if "properties" in node else None
    return {kind} if isinstance(kind, str) else set(kind)


def _narrowed(old: set[str] | None, new: set[str] | None) -> list[str]:
    """The types a value could have had that it may no longer have (integer counts as number)."""
    if old is None or new is None:
        return [] if new is None else ["any"]
    covered = new | ({"integer"} if "number" in new else set())
    return sorted(old - covered)


def _pair(
    old: list[tuple[str, Schema]], new: list[tuple[str, Schema]]
) -> Iterator[tuple[str, Schema, Schema]]:
    """Pair old and new object schemas: the only one on each side, or by path and title."""
    if len(old) == 1 and len(new) == 1:
        yield old[0][0], old[0][1], new[0][1]
        return
    by_key = {(path, schema.get("title")): schema for path, schema in new}
    for path, schema in old:
        if (match := by_key.get((path, schema.get("title")))) is not None:
            yield path, schema, match


def _compare(
    old: Schema, new: Schema, roots: tuple[Schema, Schema], path: str, seen: set[tuple[int, int]]
) -> list[str]:
    """Return breaking changes between two object schemas, recursing into shared properties."""
    seen.add((id(old), id(new)))
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    newly_required = set(new.get("required", ())) - set(old.get("required", ()))
    problems = [f"{path}.{name}: property removed" for name in old_props if name not in new_props]
    problems += [f"{path}.{name}: newly required" for name in sorted(newly_required)]
    for name in sorted(old_props.keys() & new_props.keys()):
        old_types, new_types = _types(old_props[name], roots[0]), _types(new_props[name], roots[1])
        if lost := _narrowed(old_types, new_types):
            problems.append(f"{path}.{name}: no longer accepts {', '.join(lost)}")
        old_objs = list(_objects(old_props[name], roots[0], f"{path}.{name}"))
        new_objs = list(_objects(new_props[name], roots[1], f"{path}.{name}"))
        for sub_path, old_obj, new_obj in _pair(old_objs, new_objs):
            if (id(old_obj), id(new_obj)) not in seen:  # recursive models end here
                problems += _compare(old_obj, new_obj, roots, sub_path, seen)
    return sorted(problems)


def breaking_changes(old: Schema, new: Schema) -> list[str]:
    """Return properties removed, newly required or narrowed in type (a value valid before is
    refused now) from old to new, through nested models."""
    title = old.get("title", "$")
    return _compare(_resolve(old, old), _resolve(new, new), (old, new), title, set())


def _major(version: str) -> int:
    return int(version.split(".")[0])


def compat_check(directory: Path = SCHEMA_DIR) -> list[str]:
    """Return breaking changes from the committed schemas unless SCHEMA_VERSION's major grew."""
    schemas = generate()
    problems: list[str] = []
    for path in sorted(directory.glob("*.json")):
        committed = json.loads(path.read_text(encoding="utf-8"))
        if _major(SCHEMA_VERSION) > _major(committed.get(VERSION_KEY, SCHEMA_VERSION)):
            continue
        if path.stem not in schemas:
            problems.append(f"{path.stem}: schema removed without a major version bump")
            continue
        changes = breaking_changes(committed, schemas[path.stem])
        problems += [f"{path.stem}: {change}" for change in changes]
    return problems


def main(argv: list[str] | None = None) -> int:
    """Write or check the committed schemas; exit 1 with one line per problem."""
    parser = argparse.ArgumentParser(prog="python -m shared_contract.schemas")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="regenerate the committed schemas")
    action.add_argument("--check", action="store_true", help="fail on drift or breaking changes")
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR, help="the committed schema folder")
    parser.add_argument("--against", type=Path, help="the previous schemas (default: --dir)")
    args = parser.parse_args(argv)
    if args.write:
        write(args.dir)
        return 0
    problems = check(args.dir) + compat_check(args.against or args.dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
