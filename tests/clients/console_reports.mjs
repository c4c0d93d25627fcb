// The console's reports page and the referral page's milestone form in a real browser:
// Playwright (playwright-core) driving Debian's Chromium, headless. Run by
// tests/api/console_browser.rs (its reports test) against a real Sprig holding one accepted
// referral. Usage: node console_reports.mjs BASE_URL SCREENSHOT_DIR PASSWORD REFERRAL_ID DAY
// The link worker `amara` records an action plan through the form (after a refusal); the
// manager `mina` opens the reports and drills down from a count. axe-core checks each page
// (no serious or critical violation) and each is screenshotted.
import { chromium } from 'playwright-core';
import { readFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const [base, shots, password, id, day] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
// The pages allow no script (CSP); the test's own axe-core injection is let through.
const context = await browser.newContext({ bypassCSP: true, viewport: { width: 1100, height: 900 } });
const page = await context.newPage();
page.setDefaultTimeout(60000);

function fail(message) {
  throw new Error(message);
}

async function check(name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  if (bad.length) {
    fail(`${name}: accessibility violations:\n` + bad.map((v) =>
      `${v.impact} ${v.id}: ${v.help} at ${v.nodes.map((n) => n.target.join(' ')).join('; ')}`).join('\n'));
  }
  await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  console.log(`ok ${name}`);
}

async function signIn(username) {
  await page.goto(`${base}/console/referrals`);
  await page.fill('#username', username);
  await page.fill('#password', password);
  await Promise.all([page.waitForURL('**/console/referrals'), page.click('button:has-text("Sign in")')]);
}

async function signOut() {
  await Promise.all([page.waitForURL('**/console/sign-in'), page.click('button:has-text("Sign out")')]);
}

await signIn('amara');
await page.goto(`${base}/console/referrals/${id}`);
// A complexity assessment without its basis: refused, pointing at the basis.
await page.check('#milestone-kind-complexity');
await page.fill('#milestone-on', day);
await page.check('#milestone-complex-yes');
await page.click('button:has-text("Record milestone")');
if (!(await page.locator('a[href="#milestone-basis"]').count())) fail('no error for the basis');
await check('milestone-missing-basis');
await page.check('#milestone-kind-action-plan');
await page.fill('#milestone-on', day);
await Promise.all([page.waitForURL('**#milestones'), page.click('button:has-text("Record milestone")')]);
if (!(await page.locator('td:has-text("Action plan agreed")').count())) fail('the plan is not listed');
await check('milestones');
await signOut();

await signIn('mina');
await page.goto(`${base}/console/reports?period=month`);
if (!(await page.locator('svg[role="img"]').count())) fail('no chart');
await check('reports');
const drill = page.locator('a[href^="/console/reports/referrals?"]').first();
await Promise.all([page.waitForURL('**/console/reports/referrals?**'), drill.click()]);
if (!(await page.locator(`a[href="/console/referrals/${id}"]`).count())) fail('the referral is not behind the count');
await check('report-drill-down');
await browser.close();
console.log('ok all');
