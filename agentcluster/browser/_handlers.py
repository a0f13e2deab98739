"""The browser tools' handlers for one call on one browser, and browser_task's Agent actions.

:class:`Handlers` runs each browser tool with browser-use's actions and CDP on the worker's
Chromium; each returns a JSON-able result or raises :class:`~agentcluster.errors.ToolError`.
Navigation is checked by the worker first (:meth:`BrowserWorker.denial`), and browser_task's
Agent gets the same checked navigation (:func:`agent_tools`) and the LLM port as its model.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from agentcluster.browser._browser import Browser
from agentcluster.browser._tools import (
    BrowserLlm,
    ClickArgs,
    ExtractArgs,
    NavigateArgs,
    ScreenshotArgs,
    ScrollArgs,
    SelectArgs,
    StateArgs,
    TaskArgs,
    TypeArgs,
)
from agentcluster.errors import ToolError

if TYPE_CHECKING:
    from agentcluster.browser._worker import BrowserWorker

__all__ = ["Handlers", "agent_tools", "one_line"]


class Handlers:
    """The browser tools for one call; each returns a JSON-able result or raises ToolError."""

    def __init__(self, worker: BrowserWorker, browser: Browser, llm: BrowserLlm | None) -> None:
        self._worker = worker
        self._session = browser.session
        self._llm = llm

    async def run(self, tool: str, arguments: Any) -> Any:
        handlers: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "browser_navigate": self.navigate,
            "browser_state": self.state,
            "browser_click": self.click,
            "browser_type": self.type,
            "browser_select": self.select,
            "browser_scroll": self.scroll,
            "browser_screenshot": self.screenshot,
            "browser_extract": self.extract,
            "browser_task": self.task,
        }
        return await handlers[tool](arguments)

    async def _act(self, action: str, **params: Any) -> str:
        result = await getattr(self._worker.tools(), action)(
            browser_session=self._session, **params
        )
        if result.error:
            raise ToolError(one_line(result.error, 500))
        return str(result.extracted_content or "")

    async def _page(self) -> dict[str, str]:
        # From the page itself: the target info browser-use caches lags behind navigations.
        found = await self._evaluate("({url: location.href, title: document.title})")
        page = found if isinstance(found, dict) else {}
        return {"url": str(page.get("url", "")), "title": str(page.get("title", ""))}

    async def _evaluate(self, expression: str) -> Any:
        cdp = await self._session.get_or_create_cdp_session()
        reply = await cdp.cdp_client.send.Runtime.evaluate(
            params={"expression": expression, "returnByValue": True},
            session_id=cdp.session_id,
        )
        return reply.get("result", {}).get("value")

    async def _ensure_indexed(self) -> None:
        # Indices come from the last state; compute one if the model acts before asking.
        if not await self._session.get_selector_map():
            await self._session.get_browser_state_summary(include_screenshot=False)

    async def navigate(self, args: NavigateArgs) -> dict[str, Any]:
        denial = await self._worker.denial(args.url)
        if denial is not None:
            raise ToolError(f"navigation to {args.url} denied: {denial}")
        await self._act("navigate", url=args.url, new_tab=False)
        page = await self._page()
        if page["url"] != args.url:
            denial = await self._worker.denial(page["url"])
            if denial is not None:
                await self._session.navigate_to("about:blank")
                raise ToolError(f"{args.url} redirected to {page['url']}, denied: {denial}")
        return page

    async def state(self, args: StateArgs) -> dict[str, Any]:
        summary = await self._session.get_browser_state_summary(include_screenshot=False)
        text = summary.dom_state.llm_representation()
        return {
            **await self._page(),
            "tabs": [{"url": tab.url, "title": tab.title} for tab in summary.tabs],
            "page": text[: args.max_chars],
            "truncated": len(text) > args.max_chars,
        }

    async def click(self, args: ClickArgs) -> dict[str, Any]:
        await self._ensure_indexed()
        return {"result": await self._act("click", index=args.index), **await self._page()}

    async def type(self, args: TypeArgs) -> dict[str, Any]:
        await self._ensure_indexed()
        done = await self._act("input", index=args.index, text=args.text, clear=args.clear)
        return {"result": done, **await self._page()}

    async def select(self, args: SelectArgs) -> dict[str, Any]:
        await self._ensure_indexed()
        done = await self._act("select_dropdown", index=args.index, text=args.option)
        return {"result": done, **await self._page()}

    async def scroll(self, args: ScrollArgs) -> dict[str, Any]:
        done = await self._act("scroll", down=args.direction == "down", pages=args.amount)
        return {"result": done, **await self._page()}

    async def screenshot(self, args: ScreenshotArgs) -> dict[str, Any]:
        png: bytes = await self._session.take_screenshot(full_page=args.full_page)
        width, height = _png_size(png)
        data = base64.b64encode(png).decode("ascii")
        return {
            "attachment": {"media_type": "image/png", "data_b64": data},
            "width": width,
            "height": height,
            **await self._page(),
        }

    async def extract(self, args: ExtractArgs) -> dict[str, Any]:
        if args.selector is not None:
            text = await self._act("find_elements", selector=args.selector, max_results=200)
        elif args.query is not None:
            text = await self._act("search_page", pattern=args.query)
        else:
            text = await self._page_text()
        return {"text": text[: args.max_chars], "truncated": len(text) > args.max_chars}

    async def _page_text(self) -> str:
        return str(await self._evaluate("document.body ? document.body.innerText : ''") or "")

    async def task(self, args: TaskArgs) -> dict[str, Any]:
        if self._llm is None:
            raise ToolError("browser_task needs a model, and this browser was given none")
        from browser_use import Agent

        chat = self._worker.chat_model(self._llm)
        agent: Any = Agent(
            task=args.task,
            # Its BaseChatModel protocol, but for a pydantic hook browser-use never calls here.
            llm=cast(Any, chat),
            browser_session=self._session,
            tools=agent_tools(self._worker, await self._worker.evaluate_allowed()),
            use_vision=False,
            use_judge=False,
            directly_open_url=False,
            calculate_cost=False,
            file_system_path=str(self._worker.task_workdir()),
            max_failures=2,
        )
        chat.on_refused = agent.stop  # a spent budget ends the task, no retries
        history = await agent.run(max_steps=self._worker.task_steps(args))
        if chat.refusal is not None:
            raise ToolError(f"browser_task refused: {chat.refusal.message}")
        errors = [error for error in history.errors() if error]
        return {
            "done": history.is_done(),
            "success": bool(history.is_successful()),
            "answer": history.final_result(),
            "steps": history.number_of_steps(),
            "errors": [one_line(error, 300) for error in errors[-3:]],
            **await self._page(),
        }


def agent_tools(worker: BrowserWorker, evaluate: bool = False) -> Any:
    """browser-use's actions for its Agent, minus web search and (unless the policy allowed
    it) ``evaluate``, with navigation checked."""
    from browser_use import BrowserSession, Tools
    from browser_use.agent.views import ActionResult
    from browser_use.tools.views import NavigateAction

    tools: Any = Tools(exclude_actions=["search"] if evaluate else ["search", "evaluate"])

    async def navigate(params: NavigateAction, browser_session: BrowserSession) -> ActionResult:
        denial = await worker.denial(params.url)
        if denial is not None:
            return ActionResult(error=f"navigation to {params.url} denied: {denial}")
        await browser_session.navigate_to(params.url, new_tab=params.new_tab)
        return ActionResult(extracted_content=f"Navigated to {params.url}")

    # The registry matches injected arguments by their annotation objects, and this module's
    # annotations are strings (PEP 563) naming lazily imported classes: give it the classes.
    navigate.__annotations__ = {
        "params": NavigateAction,
        "browser_session": BrowserSession,
        "return": ActionResult,
    }
    # Same name as the builtin: it replaces it in the registry, so the Agent cannot bypass it.
    tools.action("Navigate to a URL (http or https).", param_model=NavigateAction)(navigate)
    return tools


def _png_size(png: bytes) -> tuple[int, int]:
    if png[:8] != b"\x89PNG\r\n\x1a\n" or len(png) < 24:
        raise ToolError("the screenshot is not a PNG image")
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def one_line(error: object, limit: int = 300) -> str:
    """``error``'s text on one line, at most ``limit`` characters (its type's name if empty)."""
    text = " ".join(str(error).split())
    return text[:limit] or type(error).__name__
