// Drives Vigil's web page in a real headless Chromium (Debian's `chromium`)
// through Playwright, as an operator would: the live preview moves, events
// arrive in the feed, a model is uploaded and activated from the page.
//
// Run by tests/web_page.rs, which starts Vigil and checks the effect on the
// line afterwards. Environment:
//   VIGIL_URL     the web address (http://127.0.0.1:PORT)
//   VIGIL_TOKEN   the API token
//   MODEL_FILE    an .onnx file to upload to slot `ball`
//   ARTIFACTS     a folder for the screenshots
//   PLAYWRIGHT    the playwright-core package folder
//   CHROMIUM      the browser binary (default /usr/bin/chromium)
// Prints one line per step; exits non-zero on the first failure.
'use strict';

const path = require('path');
const { chromium } = require(process.env.PLAYWRIGHT);

const url = process.env.VIGIL_URL;
const token = process.env.VIGIL_TOKEN;
const artifacts = process.env.ARTIFACTS;
const step = (what) => console.log('step: ' + what);

// A cheap fingerprint of what the preview <img> shows right now.
function previewFingerprint() {
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
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking'],
  });
  const errors = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('pageerror', (e) => errors.push(String(e)));
    page.setDefaultTimeout(30000);

    await page.goto(url + '/#token=' + token);
    // The token leaves the address bar once the page has kept it.
    await page.waitForFunction(() => !location.hash);
    step('page loaded, token taken from the link');

    await page.waitForFunction(() => {
      const s = document.querySelector('figure[data-camera="cam1"] .state');
      return s && s.textContent.startsWith('streaming');
    });
    step('camera cam1 shown as streaming');

    await page.evaluate('window.previewFingerprint = ' + previewFingerprint.toString());
    await page.waitForFunction(() => window.previewFingerprint() !== null);
    const first = await page.evaluate(() => window.previewFingerprint());
    await page.waitForFunction((f) => {
      const now = window.previewFingerprint();
      return now !== null && now !== f;
    }, first);
    step('the live preview updates');

    await page.waitForSelector('#events li[data-type^="object."]');
    step('an object event is in the feed: ' + (await page.textContent('#events li[data-type^="object."]')));

    await page.setInputFiles('form.upload[data-slot="ball"] .upload-file', process.env.MODEL_FILE);
    await page.uncheck('form.upload[data-slot="ball"] .upload-activate');
    await page.click('form.upload[data-slot="ball"] button[type="submit"]');
    await page.waitForFunction(() => document.getElementById('msg').textContent.startsWith('v2 stored'));
    step('uploaded: ' + (await page.textContent('#msg')));

    await page.click('button.activate[data-slot="ball"][data-version="2"]');
    await page.waitForFunction(() => /^v2 active/.test(document.getElementById('msg').textContent)).catch(async (e) => {
      throw new Error('activation did not show: #msg says ' + JSON.stringify(await page.textContent('#msg')) + '; ' + e.message);
    });
    step('activated from the page: ' + (await page.textContent('#msg')));
    await page.waitForSelector('#events li[data-type="model.activated"]');
    step('model.activated is in the feed');
    await page.waitForFunction(() => document.getElementById('numbers').textContent.includes('v2 · yolov8'));
    step('the numbers show v2 serving');
    await page.waitForSelector('button.rollback[data-slot="ball"]');

    await page.screenshot({ path: path.join(artifacts, 'web-page.png'), fullPage: true });

    // Usable on a phone at the line: nothing wider than the screen.
    await page.setViewportSize({ width: 390, height: 844 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 0) throw new Error('the page is ' + overflow + ' px wider than a phone screen');
    await page.screenshot({ path: path.join(artifacts, 'web-page-phone.png'), fullPage: true });
    step('fits a phone screen');

    if (errors.length) throw new Error('errors in the page: ' + errors.join('; '));
    console.log('ok');
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error('FAILED: ' + (e && e.stack ? e.stack : e));
  process.exit(1);
});
