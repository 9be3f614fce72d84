#!/usr/bin/env python3
"""Drives a running cairn daemon with the official A2A Python SDK.

pip requirement: a2a-sdk>=1.0.0,<2

(The client side needs only the SDK's core dependencies, httpx among them;
no extra such as [http-server] is needed.)

Usage: python3 tests/a2a_sdk.py BASE_URL AGENT_PATH TOKEN
  BASE_URL    e.g. http://127.0.0.1:PORT
  AGENT_PATH  e.g. /a2a/echo: the agent's JSON-RPC endpoint is
              BASE_URL + AGENT_PATH, its card BASE_URL + AGENT_PATH +
              /.well-known/agent-card.json
  TOKEN       bearer token for the daemon

The agent must echo: its reply contains the prompt. Prints one line per
check; exits 1 at the first failure, saying which check failed and why.
"""

import asyncio
import sys
import uuid

REQUIREMENT = "a2a-sdk>=1.0.0,<2"
PROMPT = "hello from the sdk"
TIMEOUT_S = 120.0

try:
    import httpx
    from a2a.client import (
        A2ACardResolver,
        AuthInterceptor,
        ClientConfig,
        ClientFactory,
        CredentialService,
    )
    from a2a.types import (
        AgentCard,
        GetTaskRequest,
        Message,
        Part,
        Role,
        SendMessageRequest,
        TaskNotFoundError,
        TaskState,
    )
except ImportError as exc:  # pragma: no cover - environment problem
    print(f"FAIL: import: {exc} (install it: pip install '{REQUIREMENT}')")
    sys.exit(1)

PASSED = 0


class CheckFailed(Exception):
    """One check did not hold."""


def ok(check, detail):
    """Reports a passed check."""
    global PASSED
    PASSED += 1
    print(f"ok   {check}: {detail}", flush=True)


def require(condition, why):
    """Fails the current check with `why` unless `condition` holds."""
    if not condition:
        raise CheckFailed(why)


class Bearer(CredentialService):
    """Hands the token to the SDK for whichever scheme the card names, so
    the SDK attaches it only if it understands the card's bearer scheme."""

    def __init__(self, token):
        self.token = token
        self.asked = []

    async def get_credentials(self, security_scheme_name, context):
        self.asked.append(security_scheme_name)
        return self.token


def parts_text(parts):
    """Text of proto Parts: text parts, and data parts as their JSON."""
    out = []
    for part in parts:
        which = part.WhichOneof("content")
        if which == "text":
            out.append(part.text)
        elif which == "data":
            out.append(str(part.data))
    return "\n".join(out)


def task_text(task):
    """Everything a task says: artifacts, status message, history."""
    texts = [parts_text(a.parts) for a in task.artifacts]
    if task.status.HasField("message"):
        texts.append(parts_text(task.status.message.parts))
    texts.extend(parts_text(m.parts) for m in task.history if m.role == Role.ROLE_AGENT)
    return "\n".join(texts)


def new_request(text):
    """A SendMessageRequest with one text part."""
    return SendMessageRequest(
        message=Message(
            role=Role.ROLE_USER,
            message_id=str(uuid.uuid4()),
            parts=[Part(text=text)],
        )
    )


def state_name(state):
    """TaskState value to its name, for messages."""
    return TaskState.Name(state)


async def check_card(http, agent_url, token):
    """The card resolves with the SDK's resolver and names a 1.0 JSON-RPC
    interface and bearer auth."""
    resolver = A2ACardResolver(http, base_url=agent_url)
    card = await resolver.get_agent_card(
        http_kwargs={"headers": {"Authorization": f"Bearer {token}"}}
    )
    require(card.name, "the card has no name")
    interfaces = [
        (i.url, i.protocol_binding, i.protocol_version) for i in card.supported_interfaces
    ]
    v1 = [i for i in interfaces if i[1] == "JSONRPC" and i[2].startswith("1.")]
    require(v1, f"no JSON-RPC 1.x interface in {interfaces}")
    bearer = [
        name
        for name, scheme in card.security_schemes.items()
        if scheme.HasField("http_auth_security_scheme")
        and scheme.http_auth_security_scheme.scheme.lower() == "bearer"
    ]
    require(bearer, f"no HTTP bearer security scheme in {dict(card.security_schemes)}")
    require(card.security_requirements, "the card lists no security requirements")
    ok("card", f"{card.name!r}, interfaces {interfaces}, bearer scheme {bearer[0]!r}")
    return card


async def check_send(http, card, token):
    """A blocking send through the SDK's client completes with the echo."""
    creds = Bearer(token)
    config = ClientConfig(httpx_client=http, streaming=False)
    client = ClientFactory(config).create(card, interceptors=[AuthInterceptor(creds)])
    events = [e async for e in client.send_message(new_request(PROMPT))]
    require(len(events) == 1, f"expected one response, got {len(events)}")
    event = events[0]
    if event.HasField("task"):
        task = event.task
        require(
            task.status.state == TaskState.TASK_STATE_COMPLETED,
            f"task {task.id} is {state_name(task.status.state)}",
        )
        text = task_text(task)
        detail = f"task {task.id} completed"
    else:
        require(event.HasField("message"), f"neither task nor message: {event}")
        text = parts_text(event.message.parts)
        detail = "direct message"
    require(PROMPT in text, f"the reply does not contain {PROMPT!r}: {text!r}")
    require(creds.asked, "the SDK never asked for the bearer token: card security not understood")
    ok("send (1.0 SendMessage)", f"{detail}: {text.splitlines()[0]!r}")
    return client, task.id if event.HasField("task") else None


async def check_stream(http, card, token):
    """A streaming send yields events and ends with the echo."""
    require(card.capabilities.streaming, "the card does not advertise streaming")
    config = ClientConfig(httpx_client=http, streaming=True)
    client = ClientFactory(config).create(card, interceptors=[AuthInterceptor(Bearer(token))])
    kinds, texts, final_state = [], [], None
    async for event in client.send_message(new_request(PROMPT)):
        which = event.WhichOneof("payload")
        kinds.append(which)
        if which == "task":
            texts.append(task_text(event.task))
            final_state = event.task.status.state
        elif which == "message":
            texts.append(parts_text(event.message.parts))
            final_state = TaskState.TASK_STATE_COMPLETED
        elif which == "status_update":
            final_state = event.status_update.status.state
            if event.status_update.status.HasField("message"):
                texts.append(parts_text(event.status_update.status.message.parts))
        elif which == "artifact_update":
            texts.append(parts_text(event.artifact_update.artifact.parts))
    require(kinds, "the stream yielded no event")
    require(
        final_state == TaskState.TASK_STATE_COMPLETED,
        f"the stream ended in {state_name(final_state) if final_state is not None else 'nothing'} "
        f"after {kinds}",
    )
    text = "\n".join(texts)
    require(PROMPT in text, f"the streamed reply does not contain {PROMPT!r}: {text!r}")
    ok("stream (1.0 SendStreamingMessage)", f"{len(kinds)} events {kinds}")


async def check_get(client, task_id):
    """GetTask returns the finished task; an unknown id is TaskNotFound."""
    if task_id is not None:
        task = await client.get_task(GetTaskRequest(id=task_id))
        require(task.id == task_id, f"asked for {task_id}, got {task.id}")
        require(
            task.status.state == TaskState.TASK_STATE_COMPLETED,
            f"task {task_id} is {state_name(task.status.state)}",
        )
    try:
        await client.get_task(GetTaskRequest(id=f"no-such-task-{uuid.uuid4()}"))
    except TaskNotFoundError:
        pass
    else:
        raise CheckFailed("GetTask of an unknown id did not raise TaskNotFoundError")
    ok("get (1.0 GetTask)", "found the task; an unknown id is TaskNotFoundError (-32001)")


async def check_sdk_v03(http, card, token):
    """The SDK's own 0.3 transport, chosen from the card's 0.3 interface."""
    legacy = [
        i
        for i in card.supported_interfaces
        if i.protocol_binding == "JSONRPC" and i.protocol_version.startswith("0.3")
    ]
    require(legacy, "the card lists no JSON-RPC 0.3 interface for 0.3 clients")
    card03 = AgentCard()
    card03.CopyFrom(card)
    del card03.supported_interfaces[:]
    card03.supported_interfaces.extend(legacy)
    config = ClientConfig(httpx_client=http, streaming=False)
    client = ClientFactory(config).create(card03, interceptors=[AuthInterceptor(Bearer(token))])
    events = [e async for e in client.send_message(new_request(PROMPT))]
    require(events, "no response")
    event = events[-1]
    text = task_text(event.task) if event.HasField("task") else parts_text(event.message.parts)
    require(PROMPT in text, f"the reply does not contain {PROMPT!r}: {text!r}")
    if event.HasField("task"):
        require(
            event.task.status.state == TaskState.TASK_STATE_COMPLETED,
            f"task is {state_name(event.task.status.state)}",
        )
    ok("send (SDK's 0.3 transport, message/send)", f"{type(client).__name__} via {legacy[0].url}")


async def check_raw_v03(agent_url, token):
    """A hand-written 0.3 message/send, as a pre-1.0 client sends it (no
    A2A-Version header, which servers must read as 0.3)."""
    body = {
        "jsonrpc": "2.0",
        "id": "raw-0.3",
        "method": "message/send",
        "params": {
            "message": {
                "kind": "message",
                "role": "user",
                "messageId": str(uuid.uuid4()),
                "parts": [{"kind": "text", "text": PROMPT}],
            },
            "metadata": {},
        },
    }
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=TIMEOUT_S, trust_env=False) as raw:
        resp = await raw.post(agent_url, json=body, headers=headers)
    require(resp.status_code == 200, f"HTTP {resp.status_code}: {resp.text[:300]}")
    doc = resp.json()
    require(doc.get("jsonrpc") == "2.0" and doc.get("id") == "raw-0.3", f"bad envelope: {doc}")
    require("result" in doc, f"no result: {doc}")
    result = doc["result"]
    kind = result.get("kind")
    if kind == "task":
        state = result.get("status", {}).get("state")
        require(state == "completed", f"task state is {state!r}, want 'completed': {result}")
        texts = []
        for art in result.get("artifacts", []):
            texts += [p.get("text", "") for p in art.get("parts", []) if p.get("kind") == "text"]
        texts += [
            p.get("text", "")
            for p in (result["status"].get("message") or {}).get("parts", [])
            if p.get("kind") == "text"
        ]
    else:
        require(kind == "message", f"result kind is {kind!r}, want 'task' or 'message': {result}")
        texts = [p.get("text", "") for p in result.get("parts", []) if p.get("kind") == "text"]
    text = "\n".join(texts)
    require(PROMPT in text, f"the 0.3 reply does not contain {PROMPT!r}: {result}")
    ok("raw 0.3 message/send", f"result kind {kind!r}")


async def main(base_url, agent_path, token):
    agent_url = base_url.rstrip("/") + "/" + agent_path.strip("/")
    check = "setup"
    # trust_env=False: talk to the daemon directly, never through a proxy.
    async with httpx.AsyncClient(timeout=TIMEOUT_S, trust_env=False) as http:
        try:
            check = "card"
            card = await check_card(http, agent_url, token)
            check = "send (1.0 SendMessage)"
            client, task_id = await check_send(http, card, token)
            check = "get (1.0 GetTask)"
            await check_get(client, task_id)
            check = "stream (1.0 SendStreamingMessage)"
            await check_stream(http, card, token)
            check = "send (SDK's 0.3 transport)"
            await check_sdk_v03(http, card, token)
            check = "raw 0.3 message/send"
            await check_raw_v03(agent_url, token)
        except CheckFailed as exc:
            return fail(check, str(exc))
        except Exception as exc:  # noqa: BLE001 - any SDK error is a failure to report
            return fail(check, f"{type(exc).__name__}: {exc}")
    print(f"{PASSED} passed, 0 failed")
    return 0


def fail(check, why):
    """Reports the failed check and returns the exit code."""
    why = " ".join(why.split())  # one line, whatever the exception said
    print(f"FAIL {check}: {why}", flush=True)
    print(f"{PASSED} passed, 1 failed")
    return 1


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(main(*sys.argv[1:4])))
