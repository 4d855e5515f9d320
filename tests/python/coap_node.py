"""A CoAP node served by aiocoap, as a real peer for aiot's CoAP gateway tests.

It serves name, board, led (GET, and PUT "0"/"1") and js (a text long enough for Block2)
plus /.well-known/core on --bind:--port, and posts alive:<uid> (CON) to the gateway from
that same address, since the gateway reaches a node at the source IP of its posts.
Prints READY once bound, then runs until killed.
"""

import argparse
import asyncio

import aiocoap
import aiocoap.resource as resource


class Text(resource.Resource):
    def __init__(self, value, writable=None):
        super().__init__()
        self.value = value
        self.writable = writable

    async def render_get(self, request):
        return aiocoap.Message(code=aiocoap.CONTENT, payload=self.value.encode("utf-8"),
                               content_format=0)

    async def render_put(self, request):
        if self.writable is None:
            return aiocoap.Message(code=aiocoap.METHOD_NOT_ALLOWED)
        text = request.payload.decode("utf-8", "replace")
        if text not in self.writable:
            return aiocoap.Message(code=aiocoap.BAD_REQUEST)
        self.value = text
        print(f"PUT {text}", flush=True)
        return aiocoap.Message(code=aiocoap.CHANGED, payload=b"Updated")


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gateway", required=True, help="coap://host:port")
    parser.add_argument("--uid", required=True)
    args = parser.parse_args()

    site = resource.Site()
    site.add_resource(["name"], Text("aiocoap node"))
    site.add_resource(["board"], Text("python"))
    site.add_resource(["led"], Text("0", writable={"0", "1"}))
    site.add_resource(["js"], Text("".join(f"line {i:04d} of the script\n" for i in range(120))))
    site.add_resource([".well-known", "core"],
                      resource.WKCResource(site.get_resources_as_linkheader))
    context = await aiocoap.Context.create_server_context(site, bind=(args.bind, args.port))
    print("READY", flush=True)
    while True:
        request = aiocoap.Message(code=aiocoap.POST, payload=f"alive:{args.uid}".encode(),
                                  uri=f"{args.gateway}/alive")
        try:
            response = await context.request(request).response
            print(f"alive answered {response.code}", flush=True)
        except Exception as error:  # a test peer: report and go on
            print(f"alive failed: {error}", flush=True)
        await asyncio.sleep(5)


if __name__ == "__main__":
    asyncio.run(main())
