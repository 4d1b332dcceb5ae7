import aiohttp
from aiohttp import web

from helpers.http import start_service


async def test_broker_round_trip(broker, topic):
    assert await broker.ping() < 5


async def test_service_answers():
    async def hello(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    svc = await start_service("smoke", hello)
    async with aiohttp.ClientSession() as s, s.get(svc.url + "/x") as r:
        assert (await r.json()) == {"ok": True}
    assert svc.stats.requests == 1
