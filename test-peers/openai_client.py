"""The official OpenAI Python SDK (PyPI `openai`) against a Lattice gateway.

usage: openai_client.py BASE_URL KEY MODE [ARGS...]
  tour MODEL EMBED_MODEL    models, chat (plain; streamed without and with
                            include_usage), completion, embeddings, and the
                            errors the SDK raises; prints one JSON object
  load MODEL N CONCURRENCY  N streamed chats, CONCURRENCY at a time; prints a
                            JSON list with one entry per call
  until429 MODEL MAX        plain chats until MAX calls; prints each status
  chats MODEL N             N short plain chats one after another; prints a
                            JSON list: each call's status (or error) and
                            request id
  worker MODEL              against a Lattice worker (greedy, fixed length):
                            a streamed chat with include_usage, the same chat
                            whole, a forced tool call, and a bad request;
                            prints one JSON object
Retries are off (max_retries=0): the test sees what the gateway answered.
"""
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import openai


def client(base, key):
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=30)


def error_of(e):
    return {"status": getattr(e, "status_code", None), "type": type(e).__name__,
            "body": getattr(e, "body", None), "message": str(e)}


def tour(c, base, model, embed_model):
    out = {"models": [m.id for m in c.models.list().data]}
    msgs = [{"role": "user", "content": "hello there gateway"}]
    r = c.chat.completions.create(model=model, messages=msgs)
    out["chat"] = {"content": r.choices[0].message.content, "usage": r.usage.model_dump(),
                   "backend": r.system_fingerprint, "request_id": r._request_id}
    for name, extra in (("stream", {}), ("stream_usage", {"stream_options": {"include_usage": True}})):
        s = c.chat.completions.create(model=model, messages=msgs, stream=True, **extra)
        chunks = list(s)
        usage = [ch.usage.model_dump() for ch in chunks if ch.usage]
        out[name] = {"content": "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices),
                     "usage_chunks": usage, "request_id": s.response.headers.get("x-request-id")}
    r = c.completions.create(model=model, prompt="one two three", max_tokens=3)
    out["completion"] = {"text": r.choices[0].text, "usage": r.usage.model_dump(), "request_id": r._request_id}
    r = c.embeddings.create(model=embed_model, input=["alpha beta", "gamma"])
    out["embeddings"] = {"count": len(r.data), "dims": len(r.data[0].embedding),
                         "usage": r.usage.model_dump(), "request_id": r._request_id}
    for name, call in (
        ("unknown_model", lambda: c.chat.completions.create(model="no-such-model", messages=msgs)),
        ("empty_messages", lambda: c.chat.completions.create(model=model, messages=[])),
        ("bad_key", lambda: client(base, "lat_not_a_real_key").chat.completions.create(model=model, messages=msgs)),
    ):
        try:
            call()
            out[name] = {"status": 200}
        except openai.APIStatusError as e:
            out[name] = error_of(e)
    return out


def load(c, model, n, concurrency):
    def one(i):
        want = f"echo: request {i} of the run"
        rec = {"i": i, "ok": False, "started": False, "backend": None, "error": None}
        try:
            s = c.chat.completions.create(model=model, stream=True,
                                          messages=[{"role": "user", "content": f"request {i} of the run"}])
            rec["request_id"] = s.response.headers.get("x-request-id")
            text = ""
            for ch in s:
                rec["started"] = True
                rec["backend"] = ch.system_fingerprint or rec["backend"]
                if ch.choices:
                    text += ch.choices[0].delta.content or ""
            rec["ok"] = text == want
            rec["text"] = text
        except Exception as e:  # noqa: BLE001 - every failure is reported
            rec["error"] = f"{type(e).__name__}: {e}"
        return rec

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, range(n)))


def chats(c, model, n):
    calls = []
    for i in range(n):
        try:
            r = c.chat.completions.with_raw_response.create(
                model=model, max_tokens=4,
                messages=[{"role": "user", "content": f"call {i}"}])
            r.parse()
            calls.append({"status": r.status_code, "request_id": r.headers.get("x-request-id")})
        except openai.APIStatusError as e:
            rec = error_of(e)
            rec["request_id"] = e.response.headers.get("x-request-id")
            calls.append(rec)
    return calls


def until429(c, model, maximum):
    calls = []
    for _ in range(maximum):
        try:
            r = c.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "count these five words"}])
            body = r.parse()
            calls.append({"status": r.status_code, "usage": body.usage.model_dump(),
                          "request_id": r.headers.get("x-request-id")})
        except openai.APIStatusError as e:
            rec = error_of(e)
            rec["retry_after"] = e.response.headers.get("retry-after")
            calls.append(rec)
    return calls


def worker(c, model):
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    fixed = {"max_tokens": 24, "temperature": 0, "extra_body": {"ignore_eos": True}}
    s = c.chat.completions.create(model=model, messages=msgs, stream=True,
                                  stream_options={"include_usage": True}, **fixed)
    chunks = list(s)
    out = {"stream": {
        "content": "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices),
        "usage": [ch.usage.model_dump() for ch in chunks if ch.usage],
        "finish": [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason],
        "request_id": s.response.headers.get("x-request-id")}}
    r = c.chat.completions.create(model=model, messages=msgs, **fixed)
    out["chat"] = {"content": r.choices[0].message.content, "usage": r.usage.model_dump(),
                   "finish": r.choices[0].finish_reason, "request_id": r._request_id}
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "London"]}},
                       "required": ["city"], "additionalProperties": False}}}]
    r = c.chat.completions.create(model=model, messages=msgs, tools=tools, tool_choice="required",
                                  max_tokens=64, temperature=1.0, seed=5)
    calls = r.choices[0].message.tool_calls or []
    out["tool_call"] = {"finish": r.choices[0].finish_reason, "request_id": r._request_id,
                        "usage": r.usage.model_dump(),
                        "calls": [{"name": t.function.name, "arguments": json.loads(t.function.arguments)}
                                  for t in calls]}
    try:
        c.chat.completions.create(model=model, messages=msgs, temperature=0, extra_body={"top_k": -7})
        out["bad"] = {"status": 200}
    except openai.APIStatusError as e:
        out["bad"] = error_of(e)
    return out


def main():
    base, key, mode, *args = sys.argv[1:]
    c = client(base, key)
    if mode == "tour":
        result = tour(c, base, args[0], args[1])
    elif mode == "load":
        result = load(c, args[0], int(args[1]), int(args[2]))
    elif mode == "until429":
        result = until429(c, args[0], int(args[1]))
    elif mode == "chats":
        result = chats(c, args[0], int(args[1]))
    elif mode == "worker":
        result = worker(c, args[0])
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
