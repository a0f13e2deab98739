"""Token counting (tiktoken, offline) and trimming a conversation to a context window."""

from __future__ import annotations

import pytest
import tiktoken

from agentcluster.config import prepare_offline_environment
from agentcluster.errors import ValidationFailed
from agentcluster.llm import (
    CL100K_BASE,
    O200K_BASE,
    ChatMessage,
    ToolCallSpec,
    ToolSchema,
    count_message,
    count_messages,
    count_text,
    encoding_name_for,
    trim_history,
)

TEXT = "The quick brown fox jumps over the lazy dog, 1234567890 times. Ünïcödé too!"


def _encoding(name: str) -> tiktoken.Encoding:
    prepare_offline_environment()  # tiktoken reads LiteLLM's bundled files, no download
    return tiktoken.get_encoding(name)


def system(text: str) -> ChatMessage:
    return ChatMessage(role="system", content=text)


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def assistant(text: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=text)


def calls(*ids: str) -> ChatMessage:
    specs = [ToolCallSpec(id=i, name="lookup", arguments='{"q": "x"}') for i in ids]
    return ChatMessage(role="assistant", tool_calls=specs)


def result(call_id: str, text: str) -> ChatMessage:
    return ChatMessage(role="tool", tool_call_id=call_id, content=text)


WORDS = " ".join(f"word{i}" for i in range(60))  # roughly 120+ tokens


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", O200K_BASE),
        ("openai/gpt-4o-mini", O200K_BASE),
        ("o3-mini", O200K_BASE),
        ("gpt-4.1", O200K_BASE),
        ("gpt-4", CL100K_BASE),
        ("gpt-3.5-turbo", CL100K_BASE),
        ("anthropic/claude-3-5-sonnet", CL100K_BASE),
        ("fake-llm", CL100K_BASE),
        ("", CL100K_BASE),
    ],
)
def test_encoding_is_chosen_by_model_name(model: str, encoding: str) -> None:
    assert encoding_name_for(model) == encoding


def test_counts_match_tiktoken() -> None:
    assert count_text(TEXT, "gpt-4o") == len(_encoding("o200k_base").encode(TEXT))
    assert count_text(TEXT, "fake-llm") == len(_encoding("cl100k_base").encode(TEXT))
    # The two encodings really differ on this text, so the choice above is observable.
    assert count_text(TEXT, "gpt-4o") != count_text(TEXT, "gpt-4")
    assert count_text("", "gpt-4o") == 0
    assert count_text("<|endoftext|>", "gpt-4o") > 1  # special tokens counted as plain text


def test_message_counts_follow_openai_framing() -> None:
    enc = _encoding("cl100k_base")
    message = user(TEXT)
    assert count_message(message) == 3 + len(enc.encode("user")) + len(enc.encode(TEXT))
    # Three tokens prime the reply; tools take room as their JSON.
    assert count_messages([message]) == count_message(message) + 3
    tool = ToolSchema(name="lookup", description="Look something up.")
    assert count_messages([message], tools=[tool]) > count_messages([message])


def test_tool_calls_count_by_their_json() -> None:
    short = ChatMessage(role="assistant", tool_calls=[ToolCallSpec(id="c1", name="f")])
    long_arguments = '{"query": "' + WORDS + '"}'
    long = ChatMessage(
        role="assistant", tool_calls=[ToolCallSpec(id="c1", name="f", arguments=long_arguments)]
    )
    assert count_message(long) - count_message(short) >= count_text(WORDS) - 5


def test_everything_is_kept_when_it_fits() -> None:
    messages = [system("Be brief."), user("hi"), assistant("hello"), user("bye")]
    kept, dropped, prompt_tokens = trim_history(messages, 10_000, 1_000)
    assert kept == messages
    assert dropped == 0
    assert prompt_tokens == count_messages(messages)


def test_trimming_keeps_system_prompt_and_latest_turns() -> None:
    old = [user(f"old question {i}: {WORDS}") for i in range(10)]
    latest = [assistant("an answer"), user("the latest question")]
    messages = [system("Be brief."), *old, *latest]
    window = count_messages([messages[0], *latest]) + count_message(old[-1]) + 50
    kept, dropped, prompt_tokens = trim_history(messages, window + 100, 100)
    assert kept == [messages[0], old[-1], *latest]
    assert dropped == 9
    assert prompt_tokens == count_messages(kept) <= window


def test_tool_call_groups_are_kept_or_dropped_whole() -> None:
    group = [calls("c1", "c2"), result("c1", WORDS), result("c2", WORDS)]
    messages = [system("sys"), user("first"), *group, assistant("done"), user("next")]
    tail = [messages[0], *messages[-2:]]
    # Room for the tail and one tool result, not for the whole group: the group goes entirely.
    budget = count_messages(tail) + count_message(group[-1]) + 5
    kept, dropped, _ = trim_history(messages, budget, 0)
    assert kept == tail
    assert dropped == 4
    # Room for everything but "first": the whole group stays, and nothing orphaned.
    budget = count_messages(messages) - count_message(messages[1])
    kept, dropped, _ = trim_history(messages, budget, 0)
    assert kept == [messages[0], *group, *messages[-2:]]
    assert dropped == 1


def test_kept_history_never_starts_with_a_tool_message() -> None:
    # The input itself starts mid-group (an earlier trim cut the call away).
    messages = [system("sys"), result("c0", "stale"), user("go"), calls("c1"), result("c1", "ok")]
    kept, dropped, prompt_tokens = trim_history(messages, 10_000, 0)
    assert kept == [messages[0], *messages[2:]]
    assert dropped == 1
    assert prompt_tokens == count_messages(kept)


def test_last_user_message_is_kept_even_when_newer_messages_are_dropped() -> None:
    messages = [system("sys"), user("question"), calls("c1"), result("c1", WORDS * 3)]
    budget = count_messages(messages[:2]) + 5
    kept, dropped, _ = trim_history(messages, budget, 0)
    assert kept == messages[:2]
    assert dropped == 2


def test_error_names_the_numbers_when_nothing_fits() -> None:
    messages = [system("You are helpful. " * 50), user(WORDS)]
    needed = count_messages(messages)
    with pytest.raises(ValidationFailed) as caught:
        trim_history(messages, needed + 10, 20)
    message = str(caught.value)
    assert f"need {needed} tokens" in message
    assert f"only {needed - 10} fit" in message
    with pytest.raises(ValueError, match="leaves no room"):
        trim_history(messages, 100, 100)


def test_counts_are_remembered_within_a_bounded_amount_of_text() -> None:
    from agentcluster.llm._tokens import _CountCache

    cache = _CountCache(max_chars=160)
    first = cache.count("cl100k_base", "hello world, counted once")
    assert cache.count("cl100k_base", "hello world, counted once") == first == 5
    for index in range(20):  # more text than it keeps: the oldest go first
        assert cache.count("cl100k_base", f"text number {index:04d}") > 0
    assert cache._chars <= 160
    assert ("cl100k_base", "hello world, counted once") not in cache._counts
    huge = "word " * 100  # over a sixteenth of the budget: counted, never kept
    assert cache.count("cl100k_base", huge) == 101
    assert ("cl100k_base", huge) not in cache._counts
