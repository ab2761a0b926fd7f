"""The two ingest baselines, each a one-process aiohttp server like the daemon (`web.run_app`, no access log):

- `bare`: reads the body and answers 200;
- `verify`: the daemon's signature check and JSON parse, then 200, storing nothing.

    .venv/bin/python bench/servers.py bare --port 8181
"""

from __future__ import annotations

import argparse
import json

from aiohttp import web

from monitor.cli import loop_factory
from monitor.rutter import signature

SECRETS = ["sim-client-secret"]


async def bare(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"status": "accepted"})


async def verify(request: web.Request) -> web.Response:
    body = await request.read()
    if not signature.verify(body, request.headers.get(signature.HEADER), SECRETS):
        return web.json_response({"error": "missing or invalid X-Rutter-Signature"}, status=401)
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return web.json_response({"error": "body is not valid JSON"}, status=400)
    if not isinstance(payload, dict) or not isinstance(payload.get("code"), str):
        return web.json_response({"error": "body has no string `code`"}, status=400)
    return web.json_response({"status": "accepted"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["bare", "verify"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/webhooks/rutter", bare if args.mode == "bare" else verify)
    app.router.add_get("/healthz", lambda _: _ok())
    factory = loop_factory()  # the daemon's event loop (uvloop where installed): the same process model
    loop = factory() if factory is not None else None
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, loop=loop)


async def _ok() -> web.Response:
    return web.json_response({"status": "ok"})


if __name__ == "__main__":
    main()
