"""The function tools and the question the tool-calling e2e tests send (chat completions and /v1/responses, on
every decode path). String fields carry maxLength so that a constrained call ends within a small max_tokens."""

CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"],
        "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": CITY}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time in a city",
                                         "parameters": CITY}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
