"""Judge throughput against a loopback OpenAI-compatible judge with a fixed latency per request.

    python benchmarks/judge_throughput.py [--latency 0.2] [--rounds 16] [--concurrency 1 4 16]

The server (a separate process, so it does not share our GIL) sleeps ``--latency`` seconds per
request and answers a valid rubric JSON. For each concurrency c the RubricJudge scores ``rounds x c``
distinct (request, image, GT) triples with the cache off (every request slot is used ``rounds`` times,
so the one-off start, when all c calls encode their images before the first can be sent, weighs the
same at every level); ideal throughput is c / latency requests per second, and the script prints
achieved / ideal. Everything the real judge does per call is included:
pixel hashing, JPEG re-encoding of both images (``--side`` pixels), the HTTP round trip, parsing.
Target (issue 4): >= 90 % of ideal at concurrency 16 with 200 ms latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image, ImageDraw

REPLY = json.dumps({
    "constraints": ["a red fox"],
    "faithfulness": {"rationale": "present", "score": 1},
    "visual_correctness": {"rationale": "same fox", "score": 1},
    "text_accuracy": {"rationale": "no text", "score": None},
    "aesthetics": {"rationale": "clean", "score": 0.5},
})


def serve(latency: float, port_out: mp.Queue) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers
        disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs (40 ms each)

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))  # not parsed: the server must stay cheap
            time.sleep(latency)
            data = json.dumps({
                "id": "x", "object": "chat.completion", "created": 0, "model": "bench-judge",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY},
                             "finish_reason": "stop"}],
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256

    httpd = Server(("127.0.0.1", 0), Handler)
    port_out.put(httpd.server_address[1])
    httpd.serve_forever()


def picture(i: int, side: int) -> Image.Image:
    """A photo-like test image (gradient plus shapes), different for every ``i``."""
    img = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    draw = ImageDraw.Draw(img)
    for k in range(12):
        x, y = (i * 97 + k * 211) % side, (i * 53 + k * 131) % side
        draw.ellipse((x, y, x + side // 5, y + side // 7), fill=((i * 40 + k * 20) % 256, 90, 200 - k * 10))
    return img


async def run(judge, n: int, side: int, warmup: int) -> float:
    """Seconds for ``n`` judgements at once, after ``warmup`` untimed ones in the same event loop (the
    client, its TLS context and connections are per loop: a one-off cost of about 0.1 s, not throughput)."""
    await asyncio.gather(*(judge.ascore(f"warm-up {i}", picture(i, 64)) for i in range(warmup)))
    images = [(picture(i, side), picture(i + 1000, side)) for i in range(n)]
    start = time.perf_counter()
    scores = await asyncio.gather(*(judge.ascore(f"request {i}: a red fox", image, gt_image=gt)
                                    for i, (image, gt) in enumerate(images)))
    elapsed = time.perf_counter() - start
    await judge.aclose()  # inside this loop: its connections cannot be closed from another one
    assert all(s.faithfulness == 1 for s in scores)
    return elapsed


def main() -> None:
    from genevolve.judge.rubric import RubricJudge

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.2, help="server seconds per request")
    ap.add_argument("--rounds", type=int, default=16, help="judge calls per request slot (calls = rounds x c)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--side", type=int, default=1024, help="image side in pixels (both images)")
    args = ap.parse_args()

    ports: mp.Queue = mp.Queue()
    server = mp.Process(target=serve, args=(args.latency, ports), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{ports.get(timeout=10)}/v1"
    try:
        print(f"latency {args.latency * 1000:.0f} ms, {args.rounds} calls per slot, images {args.side}px")
        print(f"{'concurrency':>11} {'calls':>6} {'seconds':>8} {'req/s':>7} {'ideal':>7} {'% ideal':>8}")
        for c in args.concurrency:
            judge = RubricJudge("bench-judge", base_url=url, api_key_env=None, max_concurrency=c, use_cache=False)
            calls = args.rounds * c
            elapsed = asyncio.run(run(judge, calls, args.side, warmup=c))
            rate, ideal = calls / elapsed, c / args.latency
            print(f"{c:>11} {calls:>6} {elapsed:>8.2f} {rate:>7.2f} {ideal:>7.2f} {100 * rate / ideal:>7.1f}%")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
