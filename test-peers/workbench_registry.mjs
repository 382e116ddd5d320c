// Drives the workbench's registry page in Debian's headless Chromium
// (playwright-core): search the catalog, open a policy pack to see what
// installing it changes, install it, see it installed, uninstall it. A
// screenshot of each step goes to OUT_DIR. Prints a JSON report of what it
// saw on stdout; exits non-zero at the first expectation that fails.
//
// usage: node workbench_registry.mjs BASE_URL ADMIN_KEY OUT_DIR
import pw from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const [base, adminKey, outDir] = process.argv.slice(2);
fs.mkdirSync(outDir, { recursive: true });
const report = { screenshots: [], console_errors: [] };
const T = 60000;

function fail(msg) {
  console.error(`registry tour: ${msg}`);
  console.log(JSON.stringify(report));
  process.exit(1);
}

const browser = await pw.chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
  page.on('pageerror', (e) => report.console_errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') report.console_errors.push(`${m.text()} @ ${m.location().url}`); });
  const shot = async (name) => {
    const file = path.join(outDir, `${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    report.screenshots.push(file);
  };
  const waitText = async (sel, needle, what) => {
    try {
      await page.locator(sel).filter({ hasText: needle }).first().waitFor({ timeout: T });
    } catch {
      const seen = await page.locator(sel).allInnerTexts().catch(() => []);
      fail(`${what}: no ${sel} containing ${JSON.stringify(needle)} (saw ${JSON.stringify(seen)})`);
    }
  };
  const rows = (sel) => page.locator(`${sel} tr[id]`).evaluateAll((trs) => trs.map((t) => t.id));

  await page.goto(`${base}/ui/`);
  await page.fill('#token', adminKey);
  await page.click('#login');
  await page.locator('#who').waitFor({ timeout: T });
  await page.click('#nav-registry');

  // 1. Search: policy packs about destructive tools.
  await page.locator('#reg-entries tr[id]').first().waitFor({ timeout: T });
  report.all_entries = (await rows('#reg-entries')).length;
  await page.fill('#reg-search', 'destructive');
  await page.selectOption('#reg-kind', 'policy-pack');
  await page.click('#reg-go');
  await page.waitForFunction(() => document.querySelectorAll('#reg-entries tr[id]').length === 1, null, { timeout: T });
  report.found = await rows('#reg-entries');
  await shot('01-search');

  // 2. Show: the entry, its trust, and the diff installing it makes.
  await page.click('#show-dev-lattice-no-destructive-without-role');
  await page.locator('#reg-diff').waitFor({ timeout: T });
  report.trust = await page.locator('#reg-trust').innerText();
  report.diff = await page.locator('#reg-diff').innerText();
  await shot('02-show');

  // 3. Install.
  await page.click('#reg-install');
  await waitText('#notice', 'Installed dev.lattice/no-destructive-without-role@1.0.0', 'the install');
  await waitText('#reg-installed', 'dev.lattice/no-destructive-without-role', 'the installed list');
  report.installed = await rows('#reg-installed');
  report.installed_by = await page.locator('#installed-dev-lattice-no-destructive-without-role').innerText();
  await page.locator('#reg-uninstall').waitFor({ timeout: T });
  await shot('03-installed');

  // 4. Uninstall.
  await page.click('#reg-uninstall');
  await waitText('#notice', 'Uninstalled dev.lattice/no-destructive-without-role@1.0.0', 'the uninstall');
  await page.locator('#reg-install').waitFor({ timeout: T });
  await page.waitForFunction(() => document.querySelectorAll('#reg-installed tr[id]').length === 0, null, { timeout: T });
  report.installed_after = await rows('#reg-installed');
  await shot('04-uninstalled');
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
