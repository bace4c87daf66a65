"""Refresh docs/web_screenshot.png: the web page serving a trained run, in headless Chromium, with
held-out Fashion-MNIST test images (classes the default never meta-trained on).

Run (after `make setup`, with a trained run such as `runs/demo`)::

    python experiments/web_screenshot.py --checkpoint runs/demo [--out docs/web_screenshot.png]

Support: the first test image of ``--classes A B`` captioned "This is a dax." / "This is a
blicket."; query: the next test image of class B. Prints the page's answer and whether it is right.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from metamapper.data.fashion import CLASS_NAMES, FashionMNIST
from metamapper.pretrained import load_run
from metamapper.web.server import create_app

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]
CAPTIONS = ["This is a dax.", "This is a blicket."]


def fashion_images(classes: list[str], folder: Path) -> list[Path]:
    """[support A, support B, query B] as 112 px PNG files."""
    test = FashionMNIST(split="test")
    index = [CLASS_NAMES.index(c) for c in classes]
    picks = [(index[0], 0), (index[1], 0), (index[1], 1)]
    paths = []
    for (label, nth), name in zip(picks, ("dax", "blicket", "query"), strict=True):
        i = [j for j, y in enumerate(test.labels) if y == label][nth]
        path = folder / f"{name}_{CLASS_NAMES[label].lower().replace(' ', '_')}.png"
        Image.fromarray(test.images[i]).resize((112, 112), Image.NEAREST).save(path)
        paths.append(path)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="runs/demo")
    p.add_argument("--classes", nargs=2, default=["Sneaker", "Bag"], choices=CLASS_NAMES)
    p.add_argument("--out", default="docs/web_screenshot.png")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    a = p.parse_args()
    run = load_run(a.checkpoint)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(run), log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        support_a, support_b, query = fashion_images(a.classes, Path(tmp))
        browser = pw.chromium.launch(executable_path=a.chromium, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1000, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(f"http://127.0.0.1:{sock.getsockname()[1]}/")
        page.set_input_files("#support-input", [str(support_a), str(support_b)])
        captions = page.locator("input.caption")
        expect(captions).to_have_count(2)
        for i, text in enumerate(CAPTIONS):
            captions.nth(i).fill(text)
        page.set_input_files("#query-input", str(query))
        page.click("#submit")
        expect(page.locator("#results")).to_be_visible(timeout=300_000)  # a busy CPU
        answer = page.inner_text("#answer").strip()
        page.screenshot(path=a.out, full_page=True)
        browser.close()
    server.should_exit = True
    print(f"{a.out}: support {a.classes[0]} = dax, {a.classes[1]} = blicket; query {a.classes[1]}; "
          f"answer {answer!r} ({'right' if answer.strip('. ') == 'blicket' else 'wrong'})")


if __name__ == "__main__":
    main()
