"""The JSON the HTTP API accepts (OpenAPI at /docs is generated from these)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from mtlora.engine.inputs import Input
from mtlora.routing import ROUTERS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextInput(_Strict):
    text: str = Field(description="the text (first text of a pair)")
    text_pair: str | None = Field(None, description="second text, for pair tasks or a QA context")


class QAInput(_Strict):
    question: str
    context: str


HTTPInput = str | TextInput | QAInput  # the JSON forms; `engine_input` gives the engine's `Input`


class PredictRequest(_Strict):
    inputs: HTTPInput | list[HTTPInput] = Field(description="one input, or a list answered in order")
    task: str | None = Field(None, description="the adapter to answer with; omitted: route each input")
    router: str | None = Field(None, description=f"{', '.join(ROUTERS)} (default: project's)")


class RouteRequest(_Strict):
    input: HTTPInput
    router: str | None = None


# The shapes of one input, by the names the validator gives them in an error's location.
INPUT_SHAPES: dict[str, type[BaseModel]] = {"TextInput": TextInput, "QAInput": QAInput}

# The names a request body may use, as its error messages name them.
BODY_FIELDS = frozenset(name for model in (PredictRequest, RouteRequest, TextInput, QAInput)
                        for name in model.model_fields)


def engine_input(item: HTTPInput) -> Input:
    """The engine's form of an input: a text, a (text, text_pair) tuple, or a {question, context} dict."""
    if isinstance(item, str):
        return item
    if isinstance(item, QAInput):
        return {"question": item.question, "context": item.context}
    return item.text if item.text_pair is None else (item.text, item.text_pair)


def texts_of(item: HTTPInput) -> dict[str, str]:
    """An input's texts by field name ("" for a bare string), for errors that say which one."""
    if isinstance(item, str):
        return {"": item}
    if isinstance(item, QAInput):
        return {"question": item.question, "context": item.context}
    return {"text": item.text} if item.text_pair is None else {"text": item.text, "text_pair": item.text_pair}


class ErrorDetail(BaseModel):
    where: str = Field(description="the body field complained of: `inputs[1].context`")
    problem: str


class Error(BaseModel):
    type: str = Field(description="the kind of error, in snake case: invalid_request, empty_text, not_found, "
                                  "text_too_long, overloaded, internal_error, ...")
    message: str = Field(description="what is wrong, and how to fix it")
    details: list[ErrorDetail] | None = Field(None, description="each complaint of the validator (invalid_request)")


class ErrorResponse(BaseModel):
    """Every error, FastAPI's own included: `{"error": {"type", "message"}}` with its status."""

    error: Error


class Readiness(BaseModel):
    ready: bool
    tasks: list[str] = Field(description="the adapters loaded; empty while not ready")
    reason: str | None = Field(None, description="why not, where it is not starting or stopping")
