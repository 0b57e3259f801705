"""``with_structured_output`` for ChatSteeredVLM: a forced tool call, or JSON asked for and parsed."""

from __future__ import annotations

from operator import itemgetter
from typing import Any, Literal, cast

from langchain_core.language_models import LanguageModelInput
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel

from cmrm_guard.errors import ConfigError

__all__ = ["structured_output"]


def structured_output(
    llm: Any,
    schema: dict[str, Any] | type,
    *,
    method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
    include_raw: bool = False,
    strict: bool | None = None,
    **kwargs: Any,
) -> Runnable[LanguageModelInput, dict | Any]:
    """``llm`` answering as an instance of ``schema`` (pydantic class, TypedDict or JSON schema).

    ``"function_calling"`` forces a call of a tool made from the schema; ``"json_schema"`` /
    ``"json_mode"`` ask for a JSON object in the text (the schema in the system message) and
    parse it. Pydantic schemas are validated when parsed; there is no constrained decoding.
    """
    if kwargs:
        raise ConfigError(f"unknown with_structured_output argument(s) {sorted(kwargs)}")
    is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
    trace = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
    if method == "function_calling":
        tool = convert_to_openai_tool(schema, strict=strict)
        name = tool["function"]["name"]
        bound = llm.bind_tools([schema], tool_choice=name, ls_structured_output_format=trace)
        parser: Runnable = (
            PydanticToolsParser(tools=[cast(type[BaseModel], schema)], first_tool_only=True)
            if is_pydantic
            else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        )
    elif method in ("json_schema", "json_mode"):
        response_format: dict[str, Any] = {"type": "json_object"}
        if method == "json_schema":
            response_format = {"type": "json_schema", "schema": convert_to_json_schema(schema)}
        bound = llm.bind(response_format=response_format, ls_structured_output_format=trace)
        parser = (
            PydanticOutputParser(pydantic_object=cast(type[BaseModel], schema))
            if is_pydantic
            else JsonOutputParser()
        )
    else:
        raise ConfigError(f"method={method!r}: expected 'function_calling', 'json_schema' or 'json_mode'")
    if not include_raw:
        return bound | parser
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    fallback = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=bound) | parsed.with_fallbacks([fallback], exception_key="parsing_error")
