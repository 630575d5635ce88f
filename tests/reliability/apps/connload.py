"""Connection load from inside a pod (stdlib only); prints one JSON object.

  python connload.py concurrent HOST PORT N HOLD   N connections open at once, each
      echoes a unique line, all held HOLD seconds, then closed
  python connload.py churn HOST PORT N C           N connections, C at a time, each
      connect / echo a line / close
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

errors: Counter[str] = Counter()


async def open_and_echo(host: str, port: int, i: int
                        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        line = f"conn-{i}\n".encode()
        writer.write(line)
        await writer.drain()
        got = await asyncio.wait_for(reader.readline(), 10)
        if got != line:
            errors[f"bad echo {got[:20]!r}"] += 1
            writer.close()
            return None
        return reader, writer
    except Exception as e:  # every failure is counted by type
        errors[type(e).__name__] += 1
        return None


async def close(writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> None:
    try:
        writer.write_eof()
        await asyncio.wait_for(reader.read(), 10)  # the echo server's FIN after ours
        writer.close()
        await writer.wait_closed()
    except Exception as e:
        errors["close " + type(e).__name__] += 1


async def concurrent(host: str, port: int, n: int, hold: float) -> dict[str, object]:
    t0 = time.monotonic()
    sem = asyncio.Semaphore(200)  # how many handshakes are in flight, not how many open

    async def one(i: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        async with sem:
            return await open_and_echo(host, port, i)
    conns = [c for c in await asyncio.gather(*(one(i) for i in range(n))) if c]
    opened = time.monotonic() - t0
    # Every connection still works while all are open: a second round trip on each.
    async def again(i: int, c: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bool:
        try:
            c[1].write(f"again-{i}\n".encode())
            await c[1].drain()
            return await asyncio.wait_for(c[0].readline(), 10) == f"again-{i}\n".encode()
        except Exception as e:
            errors["again " + type(e).__name__] += 1
            return False
    alive = sum(await asyncio.gather(*(again(i, c) for i, c in enumerate(conns))))
    await asyncio.sleep(hold)
    await asyncio.gather(*(close(w, r) for r, w in conns))
    return {"mode": "concurrent", "requested": n, "open_at_once": len(conns),
            "alive_second_round": alive, "open_seconds": round(opened, 2),
            "total_seconds": round(time.monotonic() - t0, 2), "errors": dict(errors)}


async def churn(host: str, port: int, n: int, c: int) -> dict[str, object]:
    t0 = time.monotonic()
    done = 0
    counter = iter(range(n))

    async def worker() -> None:
        nonlocal done
        for i in counter:
            conn = await open_and_echo(host, port, i)
            if conn:
                await close(conn[1], conn[0])
                done += 1
    await asyncio.gather(*(worker() for _ in range(c)))
    took = time.monotonic() - t0
    return {"mode": "churn", "requested": n, "completed": done, "seconds": round(took, 2),
            "per_second": round(done / took, 1), "errors": dict(errors)}


def main() -> int:
    mode, host, port, n, x = sys.argv[1:6]
    if mode == "concurrent":
        result = asyncio.run(concurrent(host, int(port), int(n), float(x)))
    else:
        result = asyncio.run(churn(host, int(port), int(n), int(x)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
