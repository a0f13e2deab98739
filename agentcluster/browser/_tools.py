"""The browser tools as the model sees them: schemas, typed arguments, navigation-target checks.

The tools run in browser actors (:class:`~agentcluster.browser.BrowserWorker` in the pool's
actors); this module has no browser in it, so executors, policies and tests can use the schemas
and argument models without Chromium.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentcluster.errors import ToolError
from agentcluster.llm import ModelRoute, ToolSchema
from agentcluster.tools import WebUrl, parse_web_url, web_url_problem

__all__ = [
    "BROWSER_TOOL_NAMES",
    "BrowserLlm",
    "ClickArgs",
    "ExtractArgs",
    "NavigateArgs",
    "ScreenshotArgs",
    "ScrollArgs",
    "SelectArgs",
    "StateArgs",
    "TaskArgs",
    "TypeArgs",
    "browser_schemas",
    "navigation_problem",
    "navigation_target",
    "parse_browser_arguments",
]


class _Args(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NavigateArgs(_Args):
    """Open a URL (http or https) in the browser."""

    url: str = Field(description="The absolute http(s) URL to open.", min_length=1)


class StateArgs(_Args):
    """The current page: URL, title, tabs, and its text with interactive elements numbered
    [index] (use the index with browser_click/browser_type/browser_select)."""

    max_chars: int = Field(
        default=20_000, ge=500, le=200_000, description="Truncate the page text to this length."
    )


class ClickArgs(_Args):
    """Click the element with this index (from the last browser_state)."""

    index: int = Field(ge=1, description="The element's [index] from browser_state.")


class TypeArgs(_Args):
    """Type text into the input with this index (from the last browser_state)."""

    index: int = Field(ge=0, description="The input's [index] from browser_state.")
    text: str = Field(description="The text to type.")
    clear: bool = Field(default=True, description="Clear the field first.")


class SelectArgs(_Args):
    """Choose an option of the dropdown with this index (from the last browser_state)."""

    index: int = Field(ge=0, description="The dropdown's [index] from browser_state.")
    option: str = Field(min_length=1, description="The option's visible text or value.")


class ScrollArgs(_Args):
    """Scroll the page."""

    direction: Literal["up", "down"] = Field(default="down", description="up or down.")
    amount: float = Field(default=1.0, gt=0, le=20, description="Pages to scroll (0.5 = half).")


class ScreenshotArgs(_Args):
    """A PNG screenshot of the page, stored as an attachment."""

    full_page: bool = Field(default=False, description="The whole page, not just the viewport.")


class ExtractArgs(_Args):
    """Text from the page: the elements matching a CSS selector, the passages around a search
    text, or (with neither) the whole page text."""

    selector: str | None = Field(default=None, description="A CSS selector, e.g. 'table tr'.")
    query: str | None = Field(default=None, description="Text to search for on the page.")
    max_chars: int = Field(default=20_000, ge=100, le=200_000, description="Truncate to this.")


class TaskArgs(_Args):
    """Let a browsing agent carry out a multi-step task in this browser (it sees the pages and
    clicks, types and navigates by itself); returns its final answer."""

    task: str = Field(min_length=1, description="What to do, in plain words.")
    max_steps: int | None = Field(default=None, ge=1, le=200, description="Step budget.")


_ARGUMENTS: dict[str, type[_Args]] = {
    "browser_navigate": NavigateArgs,
    "browser_state": StateArgs,
    "browser_click": ClickArgs,
    "browser_type": TypeArgs,
    "browser_select": SelectArgs,
    "browser_scroll": ScrollArgs,
    "browser_screenshot": ScreenshotArgs,
    "browser_extract": ExtractArgs,
    "browser_task": TaskArgs,
}

BROWSER_TOOL_NAMES: tuple[str, ...] = tuple(_ARGUMENTS)


class BrowserLlm(BaseModel):
    """The model browser_task drives browser-use's Agent with (the session's model): the route
    the session host sends the browser actor with each call.

    Attributes:
        model: the model name the OpenAI-compatible endpoint expects (no ``openai/`` prefix).
        api_base: the endpoint's base URL, e.g. ``http://127.0.0.1:8089/v1``.
        api_key: its key, if it needs one.
        fallback_models: models of the same endpoint tried when ``model`` fails (the agent's
            fallbacks).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1)
    api_base: str | None = None
    api_key: str | None = Field(default=None, repr=False)
    fallback_models: tuple[str, ...] = ()

    def routes(self) -> list[ModelRoute]:
        """The LLM port's route of each model of the chain (an endpoint's bare model name goes
        to it as ``openai/<model>``)."""
        return [self._route(model) for model in (self.model, *self.fallback_models)]

    def _route(self, model: str) -> ModelRoute:
        litellm_model = f"openai/{model}" if self.api_base else model
        return ModelRoute(model, litellm_model, api_base=self.api_base, api_key=self.api_key)


def _parameters(model: type[_Args]) -> dict[str, Any]:
    schema = model.model_json_schema()
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
        # pydantic writes `str | None` as anyOf; models read a plain type with a default better.
        if "anyOf" in prop:
            kinds = [item.get("type") for item in prop.pop("anyOf") if "type" in item]
            prop["type"] = next(kind for kind in kinds if kind != "null")
            prop.pop("default", None)
    return {
        "type": "object",
        "properties": schema.get("properties", {}),
        "required": schema.get("required", []),
        "additionalProperties": False,
    }


def _description(model: type[_Args]) -> str:
    return " ".join((model.__doc__ or "").split())


_SCHEMAS: dict[str, ToolSchema] = {
    name: ToolSchema(name=name, description=_description(model), parameters=_parameters(model))
    for name, model in _ARGUMENTS.items()
}


def browser_schemas(names: list[str] | None = None) -> list[ToolSchema]:
    """The schemas of the browser tools (all, or the named ones in order).

    Raises:
        ToolError: a name is not a browser tool.
    """
    chosen = list(BROWSER_TOOL_NAMES) if names is None else names
    unknown = [name for name in chosen if name not in _SCHEMAS]
    if unknown:
        raise ToolError(f"unknown browser tool(s) {', '.join(unknown)}")
    return [_SCHEMAS[name] for name in chosen]


def parse_browser_arguments(tool: str, arguments: dict[str, Any]) -> _Args:
    """The typed arguments of a browser tool call.

    Raises:
        ToolError: unknown tool or invalid arguments (phrased for the model).
    """
    model = _ARGUMENTS.get(tool)
    if model is None:
        raise ToolError(f"unknown browser tool {tool!r}; known: {', '.join(BROWSER_TOOL_NAMES)}")
    try:
        return model.model_validate(arguments)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'arguments'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ToolError(f"invalid arguments for {tool}: {problems}") from None


def navigation_problem(url: str) -> str | None:
    """Why the browser must not open ``url`` on syntax alone (None when it may be tried).

    See :func:`navigation_target`; which hosts are allowed is the policy's decision (the browser
    actor's egress proxy asks it for every request; this check only answers early).
    """
    return web_url_problem(url)


def navigation_target(url: str) -> WebUrl:
    """``url`` parsed the way Chromium parses it (WHATWG), refusing every ambiguous form:
    control characters, backslashes, userinfo in the authority, anything but ``http(s)://``
    (see :func:`agentcluster.tools.parse_web_url`). The host is what the browser will
    connect to (``http://2130706433/`` is 127.0.0.1).

    Raises:
        ToolError: the URL is refused (the message says why, for the model).
    """
    return parse_web_url(url)
