"""Call the calculator (``examples/calc.py``) from Python: every calling style, and errors.

Start the server first (``rpc serve examples.calc:server``), then::

    python examples/client.py [--server-id calc] [--url amqp://guest:guest@localhost:5672//]
"""

from __future__ import annotations

import argparse
import threading

from rpc import Proxy, RPCTimeout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-id", default="calc")
    parser.add_argument("--url", default=None, help="default: $RPC_BROKER_URL, then localhost")
    args = parser.parse_args(argv)

    with Proxy(args.url, server_id=args.server_id, timeout=10) as calc:
        print("add(2, 3) =", calc.add(2, 3))
        print("power(2, exp=10) =", calc.power(2, exp=10))
        print("stats.describe([2, 4, 4, 4, 5, 5, 7, 9]) =",
              calc.stats.describe([2, 4, 4, 4, 5, 5, 7, 9]))
        print("math.mul(2, 4) =", calc.math.mul(2, 4))

        futures = [calc.future.mul(i, i) for i in range(5)]
        print("futures mul(i, i) =", [f.result() for f in futures])

        done = threading.Event()

        def on_result(value: float) -> None:
            print("callback sub(10, 4) =", value)
            done.set()

        calc.callback(on_result).sub(10, 4)
        done.wait(10)

        try:
            calc.div(1, 0)
        except ZeroDivisionError as exc:
            print("div(1, 0) raised ZeroDivisionError:", exc)

        try:
            calc.set_timeout(0.2).slow_add(1, 1, seconds=1)
        except RPCTimeout:
            print("slow_add with a 0.2 s timeout raised RPCTimeout")

        print("gather =", calc.gather([("add", (1, 2)), ("math.mul", (3, 4))], timeout=5))
        print("cast log_event =", calc.cast.log_event("client ran"), "(no reply awaited)")
        replies = calc.broadcast(timeout=1).reload()
        print(f"broadcast reload: {len(replies)} instance(s) answered")


if __name__ == "__main__":
    main()
