// A Redis outage as a signed-in user sees it, in Debian's headless Chromium: sign in, then (the Rust test stops
// Redis) the 503 page, then (it starts Redis again) the page reloads by itself back into Bitbucket, still signed in.
//
// Environment: BASE (the proxy's public URL), SCREENSHOTS (folder). Talks to the Rust test tests/browser.rs on
// stdout/stdin: prints "signed-in" and waits for "redis-stopped"; prints "saw-503" and waits for
// "redis-started"; prints "recovered" at the end. Exits non-zero with the reason on failure.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';

const { BASE } = process.env;
const SHOTS = process.env.SCREENSHOTS ?? 'screenshots';
fs.mkdirSync(SHOTS, { recursive: true });
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function expectLine(wanted) {
  const { value } = await lines.next();
  if (value !== wanted) throw new Error(`expected "${wanted}" from the test, got "${value}"`);
}
function check(cond, message) {
  if (!cond) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage();
try {
  await page.goto(`${BASE}/projects/ABC`);
  await page.fill('input[name=username]', 'alice');
  await page.fill('input[name=password]', 'alice-password');
  await Promise.all([page.waitForURL(`${BASE}/projects/ABC`), page.click('button[type=submit]')]);
  await page.waitForSelector('#user');
  check((await page.textContent('#user')) === 'alice', 'signed in as alice');
  console.log('signed-in');
  await expectLine('redis-stopped');

  const response = await page.goto(`${BASE}/projects/ABC`);
  check(response.status() === 503, `503 while Redis is down, got ${response.status()}`);
  check((await page.textContent('h1')).includes('Sessions are unavailable right now'), 'the page says what happened');
  check(page.url() === `${BASE}/projects/ABC`, `no redirect to a sign-in: ${page.url()}`);
  await page.screenshot({ path: path.join(SHOTS, 'session-store-unavailable.png'), fullPage: true });
  console.log('saw-503');
  await expectLine('redis-started');

  // No click, no navigation by the test: the page's own refresh brings alice back.
  await page.waitForSelector('#user', { timeout: 30000 });
  check((await page.textContent('#user')) === 'alice', 'still alice after the outage');
  check(page.url() === `${BASE}/projects/ABC`, `back where she was: ${page.url()}`);
  await page.screenshot({ path: path.join(SHOTS, 'session-store-recovered.png'), fullPage: true });
  console.log('recovered');
} catch (e) {
  console.log(`FAIL ${e.message}`);
  await page.screenshot({ path: path.join(SHOTS, 'FAILED-outage.png'), fullPage: true }).catch(() => {});
  await browser.close();
  process.exit(1);
}
await browser.close();
process.exit(0); // stdin (the test's channel) would keep node running
