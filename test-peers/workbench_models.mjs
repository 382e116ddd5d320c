// Drives the workbench's Models page in Debian's headless Chromium
// (playwright-core) until the workers that joined by themselves shown there
// are exactly the expected nodes (refreshing the page's data meanwhile).
// A screenshot goes to OUT_DIR. Prints a JSON report of what it saw on
// stdout; exits non-zero when the page never shows them.
//
// usage: node workbench_models.mjs BASE_URL ADMIN_KEY OUT_DIR NODE[,NODE...]
import pw from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const [base, adminKey, outDir, expected] = process.argv.slice(2);
const want = expected.split(',').filter((n) => n).sort();
fs.mkdirSync(outDir, { recursive: true });
const report = { console_errors: [] };

const browser = await pw.chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let ok = false;
try {
  const page = await (await browser.newContext({ viewport: { width: 1400, height: 700 } })).newPage();
  page.on('pageerror', (e) => report.console_errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') report.console_errors.push(m.text()); });
  await page.goto(`${base}/ui/`);
  await page.fill('#token', adminKey);
  await page.click('#login');
  await page.locator('#who').waitFor({ timeout: 30000 });
  await page.click('#nav-models');
  await page.locator('#routes').waitFor({ timeout: 30000 });
  const deadline = Date.now() + 30000;
  while (Date.now() < deadline) {
    report.backends = await page.locator('#routes td.backend').allInnerTexts();
    report.sources = await page.locator('#routes td.source').allInnerTexts();
    report.nodes = report.backends
      .map((t) => (t.match(/discovered: node ([^,]+),/) || [])[1])
      .filter((n) => n)
      .sort();
    if (JSON.stringify(report.nodes) === JSON.stringify(want)) { ok = true; break; }
    await page.click('#routes-refresh');
    await page.waitForTimeout(300);
  }
  await page.screenshot({ path: path.join(outDir, `models-${want.join('-') || 'none'}.png`), fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
if (!ok) {
  console.error(`models page: expected nodes ${JSON.stringify(want)}, saw ${JSON.stringify(report.nodes)}`);
  process.exit(1);
}
