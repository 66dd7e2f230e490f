"""A real agent framework from PyPI, the OpenAI Agents SDK (`openai-agents`), completes a tool-using task
against the gateway: once over the Responses API (its default model class) and once over chat completions.

SmolLM2-135M is tiny, so the task is one constrained decoding guarantees: the first turn has
tool_choice "required" (the call and its arguments are enforced by the tools' JSON schema), the agent runs
the Python function, and `tool_use_behavior="stop_on_first_tool"` makes the function's result the final
output. What the model decides freely (which city) is not asserted; that the call parsed, validated,
reached the function and came back is."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import assert_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
def test_an_agent_calls_a_tool_end_to_end(gateway_cluster, api):
    agents = pytest.importorskip("agents")
    from openai import AsyncOpenAI

    from glitches.services.generation import models

    agents.set_tracing_disabled(True)  # no exporter to OpenAI's servers
    seen: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"Sunny in {city}, 21 degrees Celsius."

    client = AsyncOpenAI(base_url=gateway_cluster["url"] + "/v1", api_key="unused", max_retries=0, timeout=300)
    model_class = agents.OpenAIResponsesModel if api == "responses" else agents.OpenAIChatCompletionsModel
    agent = agents.Agent(name="weather", instructions="Answer with the weather tool.", tools=[get_weather],
                         model=model_class(model=models.DEFAULT_MODEL, openai_client=client),
                         model_settings=agents.ModelSettings(tool_choice="required", max_tokens=48, temperature=0),
                         tool_use_behavior="stop_on_first_tool")
    result = agents.Runner.run_sync(agent, "What is the weather in Paris?", max_turns=2)
    assert len(seen) == 1 and isinstance(seen[0], str)
    assert result.final_output == f"Sunny in {seen[0]}, 21 degrees Celsius."
    assert_idle(gateway_cluster["registry"])
