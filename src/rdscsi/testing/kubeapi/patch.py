"""The three PATCH flavours kube-apiserver accepts for built-in types.

* JSON merge patch (RFC 7386), complete.
* JSON patch (RFC 6902), complete: add, remove, replace, move, copy, test.
* Strategic merge patch, the subset built-in types need: maps merge recursively, `null`
  deletes a key, lists named in the kind's merge keys merge (keyed lists by their merge key,
  `""` lists of scalars as a set), every other list is atomic and replaced whole. Directives:
  `$patch: replace|delete|merge` on maps and keyed list items, `$patch: replace` as a list
  element, `$retainKeys`, `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>`
  (listed elements first in the given order, then the rest in their existing order).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


class PatchError(ValueError):
    """The patch cannot be applied: the apiserver answers 422."""


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- RFC 6902 ----------------------------------------------------------------------------


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise PatchError(f"invalid JSON pointer {path!r}")
    if not path:
        return []
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list[Any], token: str, *, insert: bool = False) -> int:
    if token == "-" and insert:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"invalid array index {token!r}")
    index = int(token)
    if index > len(container) or (index == len(container) and not insert):
        raise PatchError(f"array index {index} out of bounds")
    return index


def _parent(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"missing path: {token}")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token)]
        else:
            raise PatchError(f"cannot descend into {type(node).__name__} at {token}")
    return node


def _get(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return doc
    parent, last = _parent(doc, tokens), tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"missing path: {last}")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last)]
    raise PatchError(f"cannot index {type(parent).__name__} with {last}")


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent, last = _parent(doc, tokens), tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, insert=True), value)
    else:
        raise PatchError(f"cannot add to {type(parent).__name__}")
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent, last = _parent(doc, tokens), tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"missing path: {last}")
        del parent[last]
    elif isinstance(parent, list):
        del parent[_index(parent, last)]
    else:
        raise PatchError(f"cannot remove from {type(parent).__name__}")
    return doc


def json_patch(doc: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise PatchError("a JSON patch is a list of operations")
    doc = copy.deepcopy(doc)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"malformed operation {op!r}")
        path = _pointer(op["path"])
        match op["op"]:
            case "add":
                doc = _add(doc, path, copy.deepcopy(op.get("value")))
            case "remove":
                doc = _remove(doc, path)
            case "replace":
                _get(doc, path)  # must exist
                doc = (
                    _add(_remove(doc, path), path, copy.deepcopy(op.get("value")))
                    if path
                    else op.get("value")
                )
            case "move":
                source = _pointer(op.get("from"))
                value = _get(doc, source)
                doc = _add(_remove(doc, source), path, value)
            case "copy":
                doc = _add(doc, path, copy.deepcopy(_get(doc, _pointer(op.get("from")))))
            case "test":
                if _get(doc, path) != op.get("value"):
                    raise PatchError(f"testing value {op['path']} failed")
            case other:
                raise PatchError(f"unknown operation {other!r}")
    return doc


# --- strategic merge patch ---------------------------------------------------------------

_DELETE = object()


def strategic_merge_patch(original: Any, patch: Any, merge_keys: Mapping[str, str]) -> Any:
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch is a JSON object")
    merged = _merge_map(original if isinstance(original, dict) else {}, patch, merge_keys, "")
    if merged is _DELETE:
        raise PatchError("a strategic merge patch cannot delete the whole object")
    return merged


def _merge_map(
    original: dict[str, Any], patch: dict[str, Any], keys: Mapping[str, str], path: str
) -> Any:
    patch = dict(patch)
    directive = patch.pop("$patch", "merge")
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return _merge_map({}, patch, keys, path)
    if directive != "merge":
        raise PatchError(f"unknown patch type {directive!r} in map at {path or '<root>'}")
    result = copy.deepcopy(original)
    retain = patch.pop("$retainKeys", None)
    if retain is not None:
        result = {k: v for k, v in result.items() if k in retain}
    orders: dict[str, list[Any]] = {}
    for name in [k for k in patch if k.startswith("$")]:
        values = patch.pop(name)
        directive, _, target = name.partition("/")
        if directive == "$deleteFromPrimitiveList" and isinstance(result.get(target), list):
            result[target] = [v for v in result[target] if v not in values]
        elif directive == "$setElementOrder":
            orders[target] = values
        elif directive != "$deleteFromPrimitiveList":
            raise PatchError(f"unknown directive {name!r}")
    for name, value in patch.items():
        child = f"{path}.{name}" if path else name
        current = result.get(name)
        if value is None:
            result.pop(name, None)
        elif isinstance(value, dict):
            merged = _merge_map(current if isinstance(current, dict) else {}, value, keys, child)
            if merged is _DELETE:
                result.pop(name, None)
            else:
                result[name] = merged
        elif isinstance(value, list):
            result[name] = _merge_list(
                current if isinstance(current, list) else [], value, keys, child
            )
        else:
            result[name] = value
    for name, order in orders.items():
        if isinstance(result.get(name), list):
            key = keys.get(f"{path}.{name}" if path else name, "")
            result[name] = _reorder(result[name], order, key)
    return result


def _strip(items: list[Any], keys: Mapping[str, str], path: str) -> list[Any]:
    return [
        _merge_map({}, item, keys, f"{path}[]") if isinstance(item, dict) else copy.deepcopy(item)
        for item in items
        if not (isinstance(item, dict) and item.get("$patch") in ("replace", "delete"))
    ]


def _merge_list(
    original: list[Any], patch: list[Any], keys: Mapping[str, str], path: str
) -> list[Any]:
    key = keys.get(path)
    replace = any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch)
    if key is None or replace:
        return _strip(patch, keys, path)
    result = copy.deepcopy(original)
    if key == "":
        result += [copy.deepcopy(item) for item in patch if item not in result]
        return result
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"map: {item!r} does not contain declared merge key: {key}")
        at = next(
            (
                i
                for i, old in enumerate(result)
                if isinstance(old, dict) and old.get(key) == item[key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            result = [
                old for old in result if not (isinstance(old, dict) and old.get(key) == item[key])
            ]
        elif at is None:
            result.append(_merge_map({}, item, keys, f"{path}[]"))
        else:
            result[at] = _merge_map(result[at], item, keys, f"{path}[]")
    return result


def _reorder(items: list[Any], order: list[Any], key: str) -> list[Any]:
    def ident(item: Any) -> Any:
        return item.get(key) if key and isinstance(item, dict) else item

    wanted = [ident(o) for o in order]
    first = [i for w in wanted for i in items if ident(i) == w]
    return first + [i for i in items if ident(i) not in wanted]
