"""SDK models copied, kept compactly (frozen) and rebuilt, without pydantic's slow paths."""

from __future__ import annotations

import json
from typing import Any

from anthropic import _models


def copy_model(model: Any, update: dict[str, Any]) -> Any:
    """A shallow copy of an SDK model with `update` applied (pydantic 2, or 1)."""
    fields_set = getattr(model, "__pydantic_fields_set__", None)
    if fields_set is None:
        return model.copy(update=update)  # pragma: no cover - pydantic 1
    # What pydantic 2's `model_copy(update=...)` does, without its generic path: this runs on
    # every attempt, and costs half as much.
    copied = object.__new__(type(model))
    set_attribute = object.__setattr__
    set_attribute(copied, "__dict__", {**model.__dict__, **update})
    set_attribute(copied, "__pydantic_fields_set__", fields_set | update.keys())
    extra, private = model.__pydantic_extra__, model.__pydantic_private__
    set_attribute(copied, "__pydantic_extra__", None if extra is None else dict(extra))
    set_attribute(copied, "__pydantic_private__", None if private is None else dict(private))
    return copied


Frozen = tuple[type, str | bytes]
"""An SDK model kept as its class and its JSON: see `freeze`."""


def freeze(model: Any) -> Frozen:
    """A compact copy of an SDK model: its class and its JSON as the API sent it (API names,
    only the fields it sent), a few hundred bytes where the objects take kilobytes."""
    serializer = getattr(type(model), "__pydantic_serializer__", None)
    if serializer is not None:  # pydantic 2: what `model_dump_json` calls, without its layer
        json_bytes: bytes = serializer.to_json(
            model, by_alias=True, exclude_unset=True, warnings=False
        )
        return type(model), json_bytes
    return type(model), model.json(by_alias=True, exclude_unset=True)  # pragma: no cover


_EMPTY_TEXT_BLOCK = (object, '{"type":"text","text":""}')


def freeze_block(block: Any) -> Frozen:
    """`freeze` for a content block start: an empty text block, nearly every one, is a constant."""
    if block.type == "text" and not block.text and block.model_fields_set == {"type", "text"}:
        return _EMPTY_TEXT_BLOCK
    return freeze(block)


def thaw(frozen: Frozen) -> dict[str, Any]:
    """The data of a frozen model, as plain JSON values."""
    data: dict[str, Any] = json.loads(frozen[1])
    return data


def wire_dict(model: Any) -> dict[str, Any]:
    """An SDK model as the API sent it: API names, only the fields it sent, JSON values."""
    data: dict[str, Any] = model.to_dict(mode="json", warnings=False)
    return data


def construct(model_class: type, data: dict[str, Any]) -> Any:
    """An SDK model built from plain data as the SDK builds a response (no validation)."""
    return _models.construct_type(type_=model_class, value=data)


def with_json_body(options: Any, body: Any) -> Any:
    """An attempt's request options with another JSON body (`extra_body` folded in it)."""
    return copy_model(options, {"json_data": body, "extra_json": None})
