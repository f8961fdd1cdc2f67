"""Drives Vigil's web page in a real headless Chromium (Debian's `chromium`)
through Playwright, as an operator would: the live preview moves, events
arrive in the feed, a model is uploaded and activated from the page.

Run by tests/web_page.rs with the venv's Python (deploy/bootstrap.sh installs
Playwright from PyPI; its wheel carries its own driver and it downloads no
browser), which starts Vigil and checks the effect on the line afterwards.
Environment:
  VIGIL_URL     the web address (http://127.0.0.1:PORT)
  VIGIL_TOKEN   the API token
  MODEL_FILE    an .onnx file to upload to slot `ball`
  ARTIFACTS     a folder for the screenshots
  CHROMIUM      the browser binary (default /usr/bin/chromium)
Prints one line per step; exits non-zero on the first failure.
"""

import json
import os
import sys

from playwright.sync_api import sync_playwright

URL = os.environ["VIGIL_URL"]
TOKEN = os.environ["VIGIL_TOKEN"]
ARTIFACTS = os.environ["ARTIFACTS"]

# A cheap fingerprint of what the preview <img> shows right now.
PREVIEW_FINGERPRINT = """() => {
  const img = document.querySelector('figure[data-camera="cam1"] img');
  if (!img || !img.naturalWidth) return null;
  const c = document.createElement('canvas');
  c.width = 64;
  c.height = 48;
  const g = c.getContext('2d');
  g.drawImage(img, 0, 0, 64, 48);
  const px = g.getImageData(0, 0, 64, 48).data;
  let h = 0;
  for (let i = 0; i < px.length; i += 4) h = (h * 31 + px[i] + 7 * px[i + 1] + 13 * px[i + 2]) >>> 0;
  return h;
}"""


def step(what):
    print("step: " + what, flush=True)


def main():
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.set_default_timeout(30000)

            page.goto(URL + "/#token=" + TOKEN)
            # The token leaves the address bar once the page has kept it.
            page.wait_for_function("() => !location.hash")
            step("page loaded, token taken from the link")

            page.wait_for_function(
                """() => {
                  const s = document.querySelector('figure[data-camera="cam1"] .state');
                  return s && s.textContent.startsWith('streaming');
                }"""
            )
            step("camera cam1 shown as streaming")

            page.evaluate("window.previewFingerprint = " + PREVIEW_FINGERPRINT)
            page.wait_for_function("() => window.previewFingerprint() !== null")
            first = page.evaluate("() => window.previewFingerprint()")
            page.wait_for_function(
                "(f) => { const now = window.previewFingerprint(); return now !== null && now !== f; }",
                arg=first,
            )
            step("the live preview updates")

            page.wait_for_selector('#events li[data-type^="object."]')
            step("an object event is in the feed: " + page.text_content('#events li[data-type^="object."]'))

            form = 'form.upload[data-slot="ball"]'
            page.set_input_files(form + " .upload-file", os.environ["MODEL_FILE"])
            page.uncheck(form + " .upload-activate")
            page.click(form + ' button[type="submit"]')
            page.wait_for_function("() => document.getElementById('msg').textContent.startsWith('v2 stored')")
            step("uploaded: " + page.text_content("#msg"))

            page.click('button.activate[data-slot="ball"][data-version="2"]')
            try:
                page.wait_for_function("() => /^v2 active/.test(document.getElementById('msg').textContent)")
            except Exception as e:
                raise RuntimeError(
                    "activation did not show: #msg says %s; %s" % (json.dumps(page.text_content("#msg")), e)
                ) from e
            step("activated from the page: " + page.text_content("#msg"))
            page.wait_for_selector('#events li[data-type="model.activated"]')
            step("model.activated is in the feed")
            page.wait_for_function("() => document.getElementById('numbers').textContent.includes('v2 · yolov8')")
            step("the numbers show v2 serving")
            page.wait_for_selector('button.rollback[data-slot="ball"]')

            page.screenshot(path=os.path.join(ARTIFACTS, "web-page.png"), full_page=True)

            # Usable on a phone at the line: nothing wider than the screen.
            page.set_viewport_size({"width": 390, "height": 844})
            overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            if overflow > 0:
                raise RuntimeError("the page is %d px wider than a phone screen" % overflow)
            page.screenshot(path=os.path.join(ARTIFACTS, "web-page-phone.png"), full_page=True)
            step("fits a phone screen")

            if errors:
                raise RuntimeError("errors in the page: " + "; ".join(errors))
            print("ok", flush=True)
        finally:
            browser.close()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one line a person can read, then the trace
        print("FAILED: %s" % e, file=sys.stderr)
        raise
