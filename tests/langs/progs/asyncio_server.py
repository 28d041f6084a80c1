# An asyncio streams server whose handler reads to EOF and never closes its writer.
import asyncio

held = []


async def handle(reader, writer):  # closewait-test: handler
    held.append(writer)
    while await reader.read(100):
        pass


async def main():
    srv = await asyncio.start_server(handle, '127.0.0.1', 0)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3600)


asyncio.run(main())
