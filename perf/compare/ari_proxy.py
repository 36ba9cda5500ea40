#!/usr/bin/env python3
"""A logging ARI proxy: sits between an ARI client (the reference engine) and an
ARI server (voxd's ARI emulator, or a real Asterisk) and records every REST
request with its status, and every event of the events WebSocket, as JSON lines.

    ari_proxy.py --listen 127.0.0.1:8088 --upstream 127.0.0.1:8089 --log DIR

Writes DIR/rest.jsonl (one line per REST request: method, path, query, request
body, status, response body) and DIR/events.jsonl (one line per WebSocket
message from the server, plus open/close markers). Needs only aiohttp (the
reference engine's venv has it). Forwards credentials untouched, logs none
(api_key is masked).
"""

import argparse
import asyncio
import json
import sys
import time

import aiohttp
from aiohttp import web

HOP = {"host", "content-length", "transfer-encoding", "connection", "upgrade",
       "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
       "sec-websocket-accept", "sec-websocket-protocol", "keep-alive"}


def masked_query(q):
    return {k: ("***" if k == "api_key" else v) for k, v in q.items()}


class Proxy:
    def __init__(self, upstream, logdir):
        self.upstream = upstream
        self.rest_log = open(f"{logdir}/rest.jsonl", "a", buffering=1)
        self.events_log = open(f"{logdir}/events.jsonl", "a", buffering=1)
        self.session = None
        self.ws_seq = 0

    async def start(self, app):
        self.session = aiohttp.ClientSession(auto_decompress=True)

    async def stop(self, app):
        await self.session.close()

    def log_rest(self, rec):
        self.rest_log.write(json.dumps(rec) + "\n")

    def log_event(self, rec):
        self.events_log.write(json.dumps(rec) + "\n")

    async def handle(self, request: web.Request):
        if request.path == "/ari/events" and request.headers.get("upgrade", "").lower() == "websocket":
            return await self.websocket(request)
        return await self.rest(request)

    async def rest(self, request: web.Request):
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        url = f"http://{self.upstream}{request.rel_url}"
        t0 = time.time()
        try:
            async with self.session.request(request.method, url, headers=headers, data=body or None,
                                            allow_redirects=False) as r:
                rbody = await r.read()
                status = r.status
                rheaders = {k: v for k, v in r.headers.items()
                            if k.lower() not in HOP and k.lower() != "content-encoding"}
        except aiohttp.ClientError as e:
            rbody, status, rheaders = json.dumps({"message": f"proxy: upstream error: {e}"}).encode(), 502, {}
        try:
            req_json = json.loads(body) if body else None
        except ValueError:
            req_json = body.decode("utf-8", "replace")[:500]
        try:
            resp_json = json.loads(rbody) if rbody else None
        except ValueError:
            resp_json = rbody.decode("utf-8", "replace")[:500]
        self.log_rest({
            "t": round(t0, 3), "ms": round((time.time() - t0) * 1000, 1),
            "method": request.method, "path": request.path,
            "query": masked_query(request.query), "body": req_json,
            "status": status, "response": resp_json,
        })
        return web.Response(status=status, body=rbody, headers=rheaders)

    async def websocket(self, request: web.Request):
        self.ws_seq += 1
        ws_id = self.ws_seq
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        url = f"ws://{self.upstream}{request.rel_url}"
        self.log_event({"t": round(time.time(), 3), "ws": ws_id, "marker": "client-open",
                        "path": request.path, "query": masked_query(request.query)})
        try:
            up = await self.session.ws_connect(url, headers=headers, autoping=True)
        except aiohttp.WSServerHandshakeError as e:
            self.log_event({"t": round(time.time(), 3), "ws": ws_id, "marker": "upstream-refused",
                            "status": e.status})
            return web.Response(status=e.status, text=json.dumps({"message": str(e.message)}),
                                content_type="application/json")
        except aiohttp.ClientError as e:
            self.log_event({"t": round(time.time(), 3), "ws": ws_id, "marker": "upstream-error",
                            "error": str(e)})
            return web.Response(status=502, text="upstream unreachable")
        down = web.WebSocketResponse(autoping=True)
        await down.prepare(request)

        async def up_to_down():
            async for msg in up:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    try:
                        ev = json.loads(msg.data)
                    except ValueError:
                        ev = msg.data
                    self.log_event({"t": round(time.time(), 3), "ws": ws_id, "event": ev})
                    await down.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await down.send_bytes(msg.data)
                else:
                    break
            self.log_event({"t": round(time.time(), 3), "ws": ws_id, "marker": "upstream-closed",
                            "code": up.close_code})
            await down.close()

        async def down_to_up():
            async for msg in down:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await up.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await up.send_bytes(msg.data)
                else:
                    break
            self.log_event({"t": round(time.time(), 3), "ws": ws_id, "marker": "client-closed",
                            "code": down.close_code})
            await up.close()

        tasks = [asyncio.ensure_future(up_to_down()), asyncio.ensure_future(down_to_up())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        await up.close()
        return down


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:8088")
    ap.add_argument("--upstream", default="127.0.0.1:8089")
    ap.add_argument("--log", required=True, help="directory for rest.jsonl and events.jsonl")
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    proxy = Proxy(a.upstream, a.log)
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.on_startup.append(proxy.start)
    app.on_cleanup.append(proxy.stop)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    print(f"ari_proxy: {a.listen} -> {a.upstream}, logs in {a.log}", file=sys.stderr, flush=True)
    web.run_app(app, host=host, port=int(port), print=None, access_log=None)


if __name__ == "__main__":
    main()
