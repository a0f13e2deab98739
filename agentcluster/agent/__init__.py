"""The agent: profiles (YAML data) and the loop (plain Python) that runs a turn."""

from agentcluster.agent._loop import (
    TURN_HANDOVER,
    AgentLoop,
    Budget,
    BudgetHold,
    Trimmer,
    TurnContext,
    TurnJournal,
    TurnNotOpen,
    TurnResult,
    add_usage,
    dangling_calls,
)
from agentcluster.agent._profiles import AgentProfile, TurnRetry, load_profiles

__all__ = [
    "TURN_HANDOVER",
    "AgentLoop",
    "AgentProfile",
    "Budget",
    "BudgetHold",
    "Trimmer",
    "TurnContext",
    "TurnJournal",
    "TurnNotOpen",
    "TurnResult",
    "TurnRetry",
    "add_usage",
    "dangling_calls",
    "load_profiles",
]
