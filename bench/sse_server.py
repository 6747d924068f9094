#!/usr/bin/env python3
"""A synthetic OpenAI-compatible server that streams a fixed pattern as fast as it can.

It stands where vLLM would behind the agent's proxy, so that the proxy itself is what a
load test measures (tests/proxy_load.rs, bench/proxy_load.py). A chat completion of
max_tokens N streams N chunks whose contents are "t0 ", "t1 ", ... "t{N-1} ", then a usage
chunk and `data: [DONE]`; without "stream" it answers the same text at once. No model, no
sampling: the same request always gets the same bytes. Standard library only (asyncio).

usage: sse_server.py PORT [--host 127.0.0.1] [--model NAME]
"""

import argparse
import asyncio
import json
import time


def chunk(model, created, delta, finish=None, usage=None):
    body = {
        "id": "chatcmpl-synthetic",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else [],
    }
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def http_chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


async def send_json(writer, doc):
    out = json.dumps(doc).encode()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(out), out))
    await writer.drain()


async def handle(reader, writer, model):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            close = headers.get("connection", "").lower() == "close" or lines[0].endswith("HTTP/1.0")
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
            if method == "GET" and path in ("/health", "/v1/models"):
                doc = {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "synthetic"}]}
                if path == "/health":
                    doc = {"status": "ok"}
                await send_json(writer, doc)
                if close:
                    break
                continue
            if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                continue
            req = json.loads(body or b"{}")
            n = int(req.get("max_tokens") or 16)
            created = int(time.time())
            usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
            if not req.get("stream"):
                text = "".join("t%d " % i for i in range(n))
                # The first token is a digit too, so an eval case matching \d passes.
                doc = {
                    "id": "chatcmpl-synthetic",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}],
                    "usage": usage,
                }
                await send_json(writer, doc)
                if close:
                    break
                continue
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(http_chunk(chunk(model, created, {"role": "assistant", "content": ""})))
            for i in range(n):
                writer.write(http_chunk(chunk(model, created, {"content": "t%d " % i})))
                # Yield to the event loop (and let the socket drain) every few chunks: as
                # fast as it can, but one chunk per write, as a token server sends them.
                if i % 8 == 7:
                    await writer.drain()
            writer.write(http_chunk(chunk(model, created, {}, finish="length")))
            writer.write(http_chunk(chunk(model, created, None, usage=usage)))
            writer.write(http_chunk(b"data: [DONE]\n\n"))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--model", default="synthetic")
    a = ap.parse_args()
    server = await asyncio.start_server(lambda r, w: handle(r, w, a.model), a.host, a.port, backlog=512)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
