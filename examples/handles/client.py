"""A driver script calling an applied endpoint through sync and async handles.

    servectl -C examples/handles apply --auto-approve
    python examples/handles/client.py examples/handles
"""
import asyncio
import json
import sys

import servectl

servectl.connect(sys.argv[1] if len(sys.argv) > 1 else ".")

sync_handle = servectl.get_handle("echo", sync=True)  # plain code: .remote() then .result()
print(json.dumps({"sync": sync_handle.remote(data="from sync").result(timeout_s=60)}))


async def main():
    async_handle = servectl.get_handle("echo", sync=False)  # asyncio code: await .remote()
    results = await asyncio.gather(*(async_handle.remote("body", data=f"async {i}") for i in range(3)))
    print(json.dumps({"async": results}))


asyncio.run(main())
