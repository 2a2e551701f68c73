"""Screenshot of the denoising page mid-decoding (the README's picture).

    python examples/denoise_page/screenshot.py --out docs/denoise_page.png            # the default model
    python examples/denoise_page/screenshot.py --model /tmp/wp/release --out /tmp/page.png

Loads the model, serves it (``fastdllm.serve.create_app`` under uvicorn on 127.0.0.1), opens the
page in headless Chromium (``browser.py``: Debian's chromium and chromium-driver, nothing
downloaded), decodes an example prompt in slow motion, pauses the playback once ``--blocks``
blocks are on screen and the current one still has masked cells, and saves a PNG of the page.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``examples.denoise_page`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples.denoise_page import browser  # noqa: E402

MID_DECODING = ("document.querySelectorAll('#blocks .block-row').length >= {blocks} "
                "&& document.querySelectorAll('#blocks .block-row.live .cell.decoded').length >= {decoded} "
                "&& document.querySelectorAll('#blocks .block-row.live .cell.masked').length > 0")


def set_control(driver, element_id: str, value) -> None:
    driver.execute_script(
        "const e = document.getElementById(arguments[0]);"
        "if (e.type === 'checkbox') e.checked = arguments[1]; else e.value = arguments[1];"
        "e.dispatchEvent(new Event('input'));", element_id, value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint to serve (default: fastdllm's default model)")
    p.add_argument("--out", default="docs/denoise_page.png", help="PNG to write (default: %(default)s)")
    p.add_argument("--name", help="served model name (default: word-problems, or the model path's last part)")
    p.add_argument("--prompt", help="prompt to decode (default: the page's first example)")
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--blocks", type=int, default=2, help="blocks on screen before pausing (default: %(default)s)")
    p.add_argument("--decoded", type=int, default=4,
                   help="decoded cells of the current block before pausing (default: %(default)s)")
    p.add_argument("--pace", type=int, default=240, help="slow motion, ms per forward (default: %(default)s)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--scale", type=float, default=2.0, help="device pixel ratio (default: %(default)s)")
    a = p.parse_args(argv)
    why = browser.missing()
    if why:
        print(f"screenshot: {why}", file=sys.stderr)
        return 2

    import fastdllm
    from fastdllm.serve import create_app

    llm = fastdllm.load(a.model)
    name = a.name or (Path(a.model).resolve().name if a.model else "word-problems")
    app = create_app(llm, name)
    with browser.serve(app) as base, browser.chromium(a.width, 900) as driver:
        driver.get(base + "/")
        browser.wait_for(driver, "document.body.dataset.state === 'idle'")
        if a.prompt:
            set_control(driver, "prompt", a.prompt)
        set_control(driver, "threshold", a.threshold)
        set_control(driver, "max-tokens", a.max_tokens)
        set_control(driver, "pace", a.pace)
        driver.find_element("id", "run").click()
        cond = MID_DECODING.format(blocks=a.blocks, decoded=a.decoded)
        state = browser.wait_for(driver, f"({cond}) ? 'mid' : (document.body.dataset.state !== 'running' "
                                         f"? document.body.dataset.state : '')", timeout=300)
        if state == "mid":
            driver.find_element("id", "pause").click()
        else:
            print(f"screenshot: the decoding ended ({state}) before the wanted state; saving the end",
                  file=sys.stderr)
        time.sleep(0.4)  # the last cells' pop animation
        # the whole page in one viewport at the wanted pixel ratio (a window cannot outgrow the screen)
        height = 900
        for _ in range(3):  # the height at the new width may differ: measure again
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": a.width, "height": height, "deviceScaleFactor": a.scale, "mobile": False})
            height = driver.execute_script("window.scrollTo(0, 0); return Math.ceil("
                                           "document.querySelector('footer').getBoundingClientRect().bottom)")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": a.width, "height": height, "deviceScaleFactor": a.scale, "mobile": False})
        time.sleep(0.3)
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    print(f"screenshot: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
