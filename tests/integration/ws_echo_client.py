#!/usr/bin/python3
"""A real WebSocket client (python3-websockets) for the Streaming tests.

Usage: ws_echo_client.py URL
Echoes text messages, a 1 MiB binary one and a ping through URL, prints "echo ok", then keeps the
socket open until a line (or EOF) arrives on stdin, closes it and prints "closed <code>".
Everything is bounded: 60 s in all.
"""
import asyncio
import os
import sys

import websockets


async def session(url):
    async with websockets.connect(url, max_size=None, ping_interval=None, open_timeout=20,
                                  close_timeout=10, compression=None) as ws:
        for text in ["hello", "a second message", "x" * 1000]:
            await ws.send(text)
            echoed = await ws.recv()
            assert echoed == text, f"text echo: {echoed!r}"
        big = os.urandom(1 << 20)
        await ws.send(big)
        echoed = await ws.recv()
        assert echoed == big, f"1 MiB echo: {len(echoed)} bytes"
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 10)
        print("echo ok", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await ws.close()
        print(f"closed {ws.close_code}", flush=True)


asyncio.run(asyncio.wait_for(session(sys.argv[1]), 60))
