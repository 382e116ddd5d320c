// Drives the workbench in Debian's headless Chromium (playwright-core, no
// downloaded browser) through what an operator does: log in (after two bad
// tries), watch the overview, chat with two models side by side, find that
// chat in the audit explorer and export it, approve a quarantined tool, ask
// the what-if form, and log in as a tenant-scoped auditor. A screenshot of
// each step goes to OUT_DIR. Prints a JSON report of what it saw on stdout;
// exits non-zero at the first expectation that fails.
//
// usage: node workbench_tour.mjs BASE_URL ADMIN_KEY AUDITOR_KEY OUT_DIR
import pw from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const [base, adminKey, auditorKey, outDir] = process.argv.slice(2);
fs.mkdirSync(outDir, { recursive: true });
const report = { screenshots: [], console_errors: [] };
const T = 20000;

function fail(msg) {
  console.error(`workbench tour: ${msg}`);
  console.log(JSON.stringify(report));
  process.exit(1);
}

const browser = await pw.chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();
  page.on('pageerror', (e) => report.console_errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') report.console_errors.push(`${m.text()} @ ${m.location().url}`); });
  page.on('response', (r) => { if (r.url().endsWith('.wasm')) report.wasm_encoding = r.headers()['content-encoding'] ?? null; });
  page.on('response', (r) => { if (r.status() >= 400) (report.http_errors ??= []).push(`${r.status()} ${r.request().method()} ${r.url()}`); });

  const shot = async (name) => {
    const file = path.join(outDir, `${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    report.screenshots.push(file);
  };
  const textOf = (sel) => page.locator(sel).first().innerText({ timeout: T });
  const waitText = async (sel, needle, what) => {
    try {
      await page.locator(sel).filter({ hasText: needle }).first().waitFor({ timeout: T });
    } catch {
      const seen = await page.locator(sel).allInnerTexts().catch(() => []);
      fail(`${what}: no ${sel} containing ${JSON.stringify(needle)} (saw ${JSON.stringify(seen)})`);
    }
  };
  // A refusal the tour provoked on purpose: the browser logs it once; take
  // it out of the console errors, which must otherwise stay empty.
  const expectRefused = (status, urlPart) => {
    const i = report.console_errors.findIndex((e) => e.includes(`status of ${status}`) && e.includes(urlPart));
    if (i < 0) fail(`expected a ${status} from ${urlPart} in the console, saw ${JSON.stringify(report.console_errors)}`);
    report.console_errors.splice(i, 1);
  };
  const login = async (key) => {
    await page.fill('#token', key);
    await page.click('#login');
    await page.locator('#who').waitFor({ timeout: T });
  };

  // 1. Login: an empty form and a bad key get clear messages.
  await page.goto(`${base}/ui/`);
  await page.click('#login');
  await waitText('.error', 'Paste an API key', 'empty login');
  await page.fill('#token', 'lat_000000000000_not-a-real-key');
  await page.click('#login');
  await waitText('.error', 'Login refused: 401', 'bad key');
  report.bad_login = await textOf('.error');
  expectRefused('401', '/admin/v1/whoami');
  await shot('01-login-refused');
  await login(adminKey);
  report.who = await textOf('#who');

  // 2. Overview: live tiles.
  await page.locator('#tile-rps').waitFor({ timeout: T });
  await shot('02-overview');

  // 3. Chat with two models side by side, streamed.
  await page.click('#nav-chat');
  await page.locator('#model-llama').waitFor({ timeout: T });
  if (!(await page.isChecked('#model-llama'))) await page.check('#model-llama');
  await page.check('#model-qwen');
  await page.fill('#chat-input', 'hello from the workbench chat');
  await page.click('#chat-send');
  // While streaming, a column shows part of its answer.
  let partial = null;
  const deadline = Date.now() + T;
  while (Date.now() < deadline && partial === null) {
    const cols = await page.locator('.chat-column').evaluateAll((els) => els.map((e) => ({
      title: e.querySelector('h2')?.innerText ?? '',
      answer: [...e.querySelectorAll('.msg.assistant')].pop()?.innerText ?? '',
    })));
    const c = cols.find((c) => c.title.includes('streaming') && c.answer.length > 0 && c.answer !== 'echo: hello from the workbench chat');
    if (c) partial = c.answer;
    else await page.waitForTimeout(20);
  }
  if (partial === null) fail('never saw an answer part-way through streaming');
  report.partial_answer = partial;
  await page.waitForFunction(() => {
    const cols = [...document.querySelectorAll('.chat-column')];
    return cols.length === 2 && cols.every((c) => !c.querySelector('h2').innerText.includes('streaming'));
  }, null, { timeout: T });
  report.answers = await page.locator('.chat-column').evaluateAll((els) => els.map((e) => ({
    model: e.dataset.model, answer: [...e.querySelectorAll('.msg.assistant')].pop()?.innerText ?? '',
    error: e.querySelector('.error')?.innerText ?? null,
  })));
  await shot('03-chat');

  // 4. Find that chat in the audit explorer; its detail; export it.
  await page.click('#nav-audit');
  await page.locator('#f-principal').waitFor({ timeout: T });
  await page.fill('#f-principal', 'alice');
  await page.fill('#f-kind', 'llm.chat');
  await page.click('#f-search');
  await waitText('#audit-table tr.row td.target', 'llama', 'the chat in the audit table');
  await waitText('#chain-status', 'Chain verified', 'the chain status');
  report.chain_status = await textOf('#chain-status');
  report.audit_rows = await page.locator('#audit-table tr.row').evaluateAll((rows) => rows.map((r) =>
    [...r.querySelectorAll('td')].map((td) => td.innerText)));
  await page.locator('#audit-table tr.row').filter({ hasText: 'decision' }).filter({ hasText: 'llama' }).first().click();
  await waitText('#event-detail', 'humans-chat-models', 'the deciding policy in the detail');
  report.detail = await textOf('#event-detail');
  await shot('04-audit');
  const [download] = await Promise.all([page.waitForEvent('download', { timeout: T }), page.click('#export-csv')]);
  const csvPath = path.join(outDir, 'audit-export.csv');
  await download.saveAs(csvPath);
  report.csv = fs.readFileSync(csvPath, 'utf8');

  // 5. A quarantined tool: the diff, then approval.
  await page.click('#nav-mcp');
  await waitText('#tools td.quarantined', 'quarantined', 'the quarantined tool');
  report.quarantine_row = await textOf('#tool-drift__greet');
  await shot('05-quarantined-tool');
  await page.click('#approve-drift__greet');
  await waitText('#notice', 'Approved drift__greet', 'the approval notice');
  await waitText('#tool-drift__greet', 'approved', 'the approved tool');
  report.approved_row = await textOf('#tool-drift__greet');
  await shot('06-approved-tool');

  // Bad input on the register form: checked in the page, then by the gateway.
  await page.click('#srv-add');
  await waitText('.error', 'needs a name', 'an empty server form');
  await page.fill('#srv-name', 'internal');
  await page.selectOption('#srv-transport', 'http');
  await page.fill('#srv-target', 'http://10.1.2.3/mcp');
  await page.click('#srv-add');
  await waitText('.error', 'Registration refused: 400', 'a private-network server');
  report.register_refused = await textOf('.error');
  expectRefused('400', '/admin/v1/mcp/servers');
  // A valid one is registered and starts.
  await page.fill('#srv-name', 'memo');
  await page.selectOption('#srv-transport', 'stdio');
  await page.fill('#srv-target', process.env.WB_SERVER_CMD);
  await page.fill('#srv-args', process.env.WB_SERVER_ARGS);
  await page.click('#srv-add');
  await waitText('#notice', 'Registered memo', 'a registered server');
  await waitText('#servers tr', 'memo', 'the new server in the table');

  // Models: routes with their backends; bad input on the add form.
  await page.click('#nav-models');
  await waitText('#routes td', 'gpu-a', 'the routes table');
  report.routes = await textOf('#routes');
  await page.click('#route-add');
  await waitText('.error', 'needs a model name', 'an empty route form');
  await page.fill('#route-name', 'mistral');
  await page.fill('#route-backend', 'gpu-b');
  await page.fill('#route-url', 'not a url');
  await page.click('#route-add');
  await waitText('.error', 'Route refused: 400', 'a route with a bad URL');
  report.route_refused = await textOf('.error');
  expectRefused('400', '/admin/v1/models');
  await page.fill('#route-url', process.env.WB_BACKEND_URL);
  await page.click('#route-add');
  await waitText('main .ok', 'Added route mistral', 'an added route');
  await waitText('#routes td', 'mistral', 'the new route in the table');
  report.routes_after = await textOf('#routes');
  await shot('07-models');

  // 6. What-if: a tenant auditor on their own tenant, then on another.
  await page.click('#nav-policies');
  await page.locator('#wi-principal').waitFor({ timeout: T });
  await page.click('#wi-submit');
  await waitText('.error', 'Name the principal', 'an empty what-if');
  await page.fill('#wi-principal', 'ann');
  await page.selectOption('#wi-ptype', 'Human');
  await page.fill('#wi-tenant', 'acme');
  await page.fill('#wi-roles', 'auditor');
  await page.selectOption('#wi-action', 'admin.read_audit');
  await page.selectOption('#wi-rtype', 'Tenant');
  await page.fill('#wi-resource', 'globex');
  await page.click('#wi-submit');
  await waitText('#whatif-decision', 'deny', 'what-if on another tenant');
  report.whatif_other = await textOf('#whatif-answer');
  await page.fill('#wi-resource', 'acme');
  await page.click('#wi-submit');
  await waitText('#whatif-decision', 'allow', 'what-if on their own tenant');
  report.whatif_own = await textOf('#whatif-answer');
  await page.fill('#candidate', 'permit (principal, action == Lattice::Action::"fly", resource);');
  await page.click('#validate');
  await page.locator('#validation').waitFor({ timeout: T });
  report.validation = await textOf('#validation');
  // The live set's invariants, and a candidate checked against them.
  report.active_invariants = await textOf('#invariants');
  await page.fill('#candidate', process.env.WB_CANDIDATE);
  await page.click('#validate');
  await waitText('#validation', 'newly allowed', 'a candidate checked against the invariants');
  report.candidate_check = await textOf('#validation');
  await shot('08-what-if');

  // 7. A tenant-scoped auditor sees only their tenant, and no admin pages.
  await page.click('text=Log out');
  await login(auditorKey);
  report.auditor_who = await textOf('#who');
  await page.click('#nav-audit');
  await page.locator('#audit-table tr.row').first().waitFor({ timeout: T });
  report.auditor_tenants = [...new Set(await page.locator('#audit-table td.tenant').allInnerTexts())];
  report.auditor_principals = [...new Set(await page.locator('#audit-table td.principal').allInnerTexts())];
  await shot('09-auditor-audit');
  await page.click('#nav-mcp');
  await waitText('main', 'do not allow `admin.approve_tool`', 'the auditor on the MCP page');
  await shot('10-auditor-mcp');
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
