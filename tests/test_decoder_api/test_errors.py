"""The error table: each code once, each raised by exactly one class, each documented under its status."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import decoder_api
from decoder_api.errors import ERROR_CODES, DecoderError
from decoder_api.http.openapi import RESPONSE_NAMES, openapi_document
from decoder_api.sessions.errors import SessionBusy, WrongInstance


def import_every_module() -> None:
    for module in pkgutil.walk_packages(decoder_api.__path__, prefix="decoder_api."):
        if not module.name.endswith(".__main__"):  # an entry point runs when imported
            importlib.import_module(module.name)


def error_classes() -> list[type[DecoderError]]:
    """Every ``DecoderError`` subclass that declares a code (families such as ``StreamError`` do not)."""
    import_every_module()
    found: list[type[DecoderError]] = []
    pending = list(DecoderError.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if "code" in cls.__dict__:
            found.append(cls)
    return found


def test_every_error_class_has_a_code_of_the_table_and_no_two_share_one() -> None:
    classes = error_classes()
    codes = [cls.code for cls in classes]
    assert sorted(set(codes)) == sorted(codes), "a code is raised by two classes"
    for cls in classes:
        assert cls.code in ERROR_CODES, cls
        assert cls.status == ERROR_CODES[cls.code].status, cls


def test_every_code_of_the_table_is_raised_by_a_class() -> None:
    assert {cls.code for cls in error_classes()} == set(ERROR_CODES)


def test_the_openapi_document_lists_every_code_under_its_status() -> None:
    responses = openapi_document()["components"]["responses"]
    for entry in ERROR_CODES.values():
        assert f"`{entry.code}`" in responses[RESPONSE_NAMES[entry.status]]["description"], entry
    for status, name in RESPONSE_NAMES.items():
        listed = {
            entry.code
            for entry in ERROR_CODES.values()
            if f"`{entry.code}`:" in responses[name]["description"]
        }
        assert listed == {entry.code for entry in ERROR_CODES.values() if entry.status == status}, name


def test_a_class_with_an_unknown_or_taken_code_or_its_own_status_is_refused() -> None:
    with pytest.raises(TypeError, match=r"not in decoder_api\.errors\.ERROR_CODES"):
        type("Unlisted", (DecoderError,), {"code": "no_such_code"})
    with pytest.raises(TypeError, match=r"already raised by decoder_api\.sessions\.errors\.SessionBusy"):
        type("AnotherBusy", (DecoderError,), {"code": SessionBusy.code})
    with pytest.raises(TypeError, match="declare only code"):
        type("WithStatus", (DecoderError,), {"code": "session_busy", "status": 418})


def test_an_error_answers_with_its_code_message_and_extras() -> None:
    error = WrongInstance("owned elsewhere", retry_after=3)
    assert (error.status, error.to_dict()) == (
        409,
        {"error": "wrong_instance", "message": "owned elsewhere", "retry_after": 3},
    )
