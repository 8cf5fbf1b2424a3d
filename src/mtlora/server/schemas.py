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
