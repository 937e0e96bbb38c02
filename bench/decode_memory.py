"""Memory of concurrent worst-case uploads through the real service (issue 12, defect 12).

Starts gunicorn (embedded store, tiny random-init model: the figure is about decoding), sends
``--concurrent`` simultaneous upload searches of a 6300x6300 RGBA PNG (39.7 M pixels, just under
MAX_IMAGE_PIXELS; ~165 KB on the wire), samples the service's RSS every 20 ms, and prints the
RSS before, the peak during, and the RSS after. Run it with --decode-in-process to measure the
same decodes without the service (what `decode_image` costs alone).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

from bench.server import rss_mib, running_service
from bench.slow_clients import make_store


def worst_case_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (6300, 6300), (200, 30, 30, 128)).save(buffer, "PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrent", type=int, default=8)
    args = parser.parse_args()
    photo = worst_case_png()
    with tempfile.TemporaryDirectory() as tmp:
        env = make_store(Path(tmp))
        with running_service(env) as (url, _, process):
            httpx.get(f"{url}/v1/items/red-1/similar").raise_for_status()
            before = rss_mib(process.pid)
            peak, done = [before], threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peak.append(rss_mib(process.pid))
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample)
            sampler.start()

            def upload(_: int) -> int:
                files = {"image": ("huge.png", photo)}
                return httpx.post(f"{url}/v1/search", files=files, timeout=120).status_code

            with concurrent.futures.ThreadPoolExecutor(args.concurrent) as pool:
                statuses = list(pool.map(upload, range(args.concurrent)))
            time.sleep(1.0)
            after = rss_mib(process.pid)
            done.set()
            sampler.join()
    print(
        f"{args.concurrent} concurrent uploads of a 6300x6300 RGBA PNG ({len(photo) // 1024} KB): statuses {statuses}; "
        f"service RSS before {before:.0f} MiB, peak {max(peak):.0f} MiB, after {after:.0f} MiB"
    )


if __name__ == "__main__":
    main()
