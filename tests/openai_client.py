"""The official `openai` Python client against cairn's sidecar.

Run by the integration tests with OPENAI_BASE_URL pointing at a `cairn
sidecar` whose upstream is the scripted fake: a plain call, a streamed call
and a tool call, each printed on one line.
"""

import json

from openai import OpenAI

client = OpenAI(max_retries=0, timeout=30)

plain = client.chat.completions.create(
    model="small",
    messages=[{"role": "user", "content": "Say something plain."}],
)
print("plain:", plain.choices[0].message.content)

parts = []
for chunk in client.chat.completions.create(
    model="small",
    messages=[{"role": "user", "content": "Say something streamed."}],
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
    if chunk.usage is not None:
        assert chunk.usage.completion_tokens == 5, chunk.usage
print("stream:", "".join(parts))

tool = client.chat.completions.create(
    model="small",
    messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
    tools=[
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                },
            },
        }
    ],
)
call = tool.choices[0].message.tool_calls[0]
assert tool.choices[0].finish_reason == "tool_calls", tool
print("tool:", call.function.name, json.dumps(json.loads(call.function.arguments), separators=(",", ":")))
