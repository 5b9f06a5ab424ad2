// Browser flows through the proxy's pages in Debian's headless Chromium (driven by playwright-core).
//
// Environment: BASE (the proxy's public URL), IDP and PARTNER (the two providers' issuers), SCREENSHOTS (folder).
// Exits 0 when every flow passed; prints what failed otherwise. The Rust test tests/browser.rs sets it all up.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const { BASE, IDP, PARTNER } = process.env;
const SHOTS = process.env.SCREENSHOTS ?? 'screenshots';
fs.mkdirSync(SHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

const failures = [];
function check(cond, message) {
  if (!cond) throw new Error(message);
}
async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}
async function flow(name, body) {
  const context = await browser.newContext();
  const page = await context.newPage();
  try {
    await body(page, context);
    console.log(`ok   ${name}`);
  } catch (e) {
    failures.push(name);
    console.log(`FAIL ${name}: ${e.message}`);
    await shot(page, `FAILED-${name}`).catch(() => {});
  } finally {
    await context.close();
  }
}
// The provider's login form (oidc-provider in the tests).
async function providerLogin(page, user) {
  await page.fill('input[name=username]', user);
  await page.fill('input[name=password]', `${user}-password`);
  await Promise.all([page.waitForLoadState('load'), page.click('button[type=submit]')]);
}
async function whoAmI(page) {
  await page.waitForSelector('#user', { timeout: 10000 });
  return page.textContent('#user');
}

await flow('login-page-and-email-routing', async (page, context) => {
  await page.goto(`${BASE}/projects/ABC`);
  check(page.url().startsWith(`${BASE}/sso/login?rd=`), `login page expected, at ${page.url()}`);
  check(await page.isVisible('button[value=idp]') && await page.isVisible('button[value=partner]'), 'a button per provider');
  await shot(page, 'login-page');
  await page.fill('#login_hint', 'carol@partner.example');
  await Promise.all([page.waitForURL(`${PARTNER}/**`), page.click('text=Continue')]);
  await shot(page, 'partner-provider-form');
  await providerLogin(page, 'carol');
  await page.waitForURL(`${BASE}/projects/ABC`);
  check((await whoAmI(page)) === 'carol', 'signed in as carol');
  await shot(page, 'bitbucket-as-carol');
  const cookie = (await context.cookies()).find((c) => c.name === 'bbsso');
  check(cookie && cookie.expires === -1, `without remember me the cookie ends with the browser: ${JSON.stringify(cookie)}`);
  check(cookie.httpOnly && cookie.sameSite === 'Lax', 'HttpOnly, SameSite=Lax');
});

await flow('remember-me-and-logout', async (page, context) => {
  await page.goto(`${BASE}/sso/login?rd=%2Fdashboard`);
  await page.check('input[name=remember_me]');
  await Promise.all([page.waitForURL(`${IDP}/**`), page.click('button[value=idp]')]);
  await providerLogin(page, 'alice');
  await page.waitForURL(`${BASE}/dashboard`);
  check((await whoAmI(page)) === 'alice', 'signed in as alice');
  check((await page.textContent('#groups')).includes('stash-users'), 'created with the default group');
  await shot(page, 'bitbucket-as-alice');
  const cookie = (await context.cookies()).find((c) => c.name === 'bbsso');
  check(cookie && cookie.expires > Date.now() / 1000 + 86400, `remember me makes the cookie persistent: ${JSON.stringify(cookie)}`);
  await page.goto(`${BASE}/sso/logout`);
  await page.waitForSelector('button[value=yes]');
  await shot(page, 'provider-logout');
  await Promise.all([page.waitForURL(`${BASE}/sso/logged-out`), page.click('button[value=yes]')]);
  check((await page.textContent('h1')).includes('You are signed out'), 'the logged-out page');
  await shot(page, 'logged-out');
  check(!(await context.cookies()).some((c) => c.name === 'bbsso'), 'the session cookie is gone');
});

await flow('countdown-and-cancel', async (page) => {
  await page.goto(`${BASE}/login?next=%2Fprojects`);
  await page.waitForSelector('progress');
  const first = Number(await page.textContent('#seconds'));
  await page.waitForTimeout(1200);
  const later = Number(await page.textContent('#seconds'));
  check(later < first, `the countdown runs (${first} then ${later})`);
  check(Number(await page.getAttribute('progress', 'value')) > 0, 'the progress bar moves');
  await shot(page, 'countdown');
  await Promise.all([page.waitForURL(/cancelled=1/), page.click('#cancel')]);
  check((await page.textContent('.notice')).includes('cancelled'), 'cancel shows the login page with a notice');
  await shot(page, 'countdown-cancelled');
  await page.goto(`${BASE}/login?next=%2Fprojects`);
  await page.waitForURL(`${BASE}/sso/login?rd=%2Fprojects`, { timeout: 10000 });
});

await flow('test-page-for-admins', async (page) => {
  await page.goto(`${BASE}/sso/login?provider=idp&rd=%2Fdashboard`);
  await providerLogin(page, 'bob');
  await page.waitForURL(`${BASE}/dashboard`);
  await page.goto(`${BASE}/sso/test?provider=idp`);
  await page.waitForSelector('input[name=username]');
  await providerLogin(page, 'alice');
  await page.waitForSelector('#claims', { timeout: 15000 });
  check((await page.textContent('#claims')).includes('cognito:username'), 'the claim table');
  check((await page.textContent('#outcome')).includes('alice'), 'the mapping preview');
  await shot(page, 'test-page');
  await page.goto(`${BASE}/dashboard`);
  check((await whoAmI(page)) === 'bob', 'still bob');
});

await flow('test-page-refused-for-others', async (page) => {
  await page.goto(`${BASE}/sso/login?provider=idp&rd=%2Fdashboard`);
  await providerLogin(page, 'alice');
  await page.waitForURL(`${BASE}/dashboard`);
  const response = await page.goto(`${BASE}/sso/test?provider=idp`);
  check(response.status() === 403, `403 for a non-admin, got ${response.status()}`);
  check((await page.textContent('.ref')).includes('Reference'), 'the page carries a reference');
  await shot(page, 'test-page-refused');
});

await flow('error-page', async (page) => {
  const response = await page.goto(`${BASE}/sso/callback?error=access_denied&state=x`);
  check(response.status() === 403, 'provider error page');
  check((await page.textContent('h1')).includes('cancelled or refused'), 'says what happened');
  await shot(page, 'error-page');
});

await browser.close();
if (failures.length) {
  console.log(`${failures.length} browser flow(s) failed: ${failures.join(', ')}`);
  process.exit(1);
}
console.log(`all browser flows passed; screenshots in ${SHOTS}`);
