// The console in a real browser: Playwright (playwright-core) driving Debian's Chromium,
// headless. Run by tests/api/console_browser.rs against a real Sprig holding one referral.
// Usage: node console.mjs BASE_URL SCREENSHOT_DIR PASSWORD
// Signs in as the link worker `amara`, finds the referral by NHS number, fails a decline
// without a reason, accepts, contacts, assesses, agrees a plan, records a SWEMWBS through
// the questionnaire, moves to in-support and completes; signs out; then the manager
// `mina` sees caseloads (with time to first contact), follow-ups due this week and the
// worklist's follow-up filter, and the administrator `ada` the deliveries, the
// registries, the referral's audit trail, the audit look-up and search, and the people
// page (stopping a provider's person being assignable). axe-core checks
// every page (no serious or critical violation) and each is screenshotted.
import { chromium } from 'playwright-core';
import { readFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const [base, shots, password] = process.argv.slice(2);
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
  if (!page.url().endsWith('/console/sign-in')) fail(`not sent to sign-in: ${page.url()}`);
  await page.fill('#username', username);
  await page.fill('#password', password);
  await Promise.all([page.waitForURL('**/console/referrals'), page.click('button:has-text("Sign in")')]);
}

async function signOut() {
  await Promise.all([page.waitForURL('**/console/sign-in'), page.click('button:has-text("Sign out")')]);
  await page.goto(`${base}/console/referrals`);
  if (!page.url().endsWith('/console/sign-in')) fail('still signed in after signing out');
}

async function moveTo(stage) {
  await page.check(`#to-${stage}`);
  await Promise.all([page.waitForURL(`**moved=${stage}`), page.click('button:has-text("Save stage")')]);
  console.log(`ok ${stage}`);
}

// Sign-in page (no session yet).
await page.goto(`${base}/console/referrals`);
await check('sign-in');
await signIn('amara');
const cookies = await context.cookies();
const session = cookies.find((c) => c.name === 'sprig_console') ?? fail('no session cookie');
if (!session.httpOnly || session.sameSite !== 'Strict') fail(`cookie flags: ${JSON.stringify(session)}`);
await check('worklist');

// Find the referral by NHS number.
await page.fill('#q', '900 000 0009');
await Promise.all([page.waitForURL('**q=900**'), page.click('button:has-text("Search")')]);
const links = page.locator('table a[href^="/console/referrals/"]');
if ((await links.count()) !== 1) fail(`search found ${await links.count()} referrals`);
await Promise.all([page.waitForURL('**/console/referrals/*'), links.first().click()]);
await check('referral');

// Declining without a reason: the error summary, linked to the field; nothing changes.
await page.check('#to-declined');
await page.click('button:has-text("Save stage")');
await page.waitForSelector('.nhsuk-error-summary');
const summary = await page.textContent('.nhsuk-error-summary');
if (!summary.includes('Enter a reason')) fail(`error summary: ${summary}`);
if ((await page.getAttribute('.nhsuk-error-summary a', 'href')) !== '#reason') fail('summary not linked to the field');
if (!(await page.textContent('main')).includes('Received')) fail('the stage changed');
await check('referral-missing-reason');

const referralUrl = page.url().split('/transition')[0];
await page.goto(referralUrl);
for (const stage of ['accepted', 'contacted', 'assessment-done', 'plan-agreed']) {
  await moveTo(stage);
}
// The stage form recorded the milestones with the moves (its day is filled in with today).
const milestones = await page.textContent('table:has(caption:has-text("Milestones, by day"))');
if (!milestones.includes('Initial assessment done') || !milestones.includes('Action plan agreed')) {
  fail(`milestones recorded with the moves: ${milestones}`);
}

// SWEMWBS through the questionnaire: every item "Often" (4) scores 28.
await Promise.all([page.waitForURL('**/outcomes?measure=swemwbs'), page.click('a:has-text("Record SWEMWBS")')]);
if (!(await page.textContent('main')).includes('Item 7')) fail('SWEMWBS items are not numbered');
await check('questionnaire');
for (let n = 1; n <= 7; n += 1) await page.check(`#item${n}-4`);
await Promise.all([page.waitForURL('**outcome=*'), page.click('button:has-text("Save and score")')]);
const score = await page.textContent('#outcome-score');
if (!score.includes('Score: 28')) fail(`score shown: ${score}`);
await check('outcome-recorded');

await moveTo('in-support');
// Completing records the discharge: without its reason the form says so, and nothing moves.
await page.check('#to-completed');
await page.click('button:has-text("Save stage")');
await page.waitForSelector('.nhsuk-error-summary');
if ((await page.getAttribute('.nhsuk-error-summary a', 'href')) !== '#transition-discharge-reason') {
  fail('the discharge reason is not the field in error');
}
await check('referral-missing-discharge-reason');
await page.selectOption('#transition-discharge-reason', 'goals-met');
await moveTo('completed');
await check('referral-completed');
await signOut();

await signIn('mina');
await page.goto(`${base}/console/caseloads`);
if (!(await page.textContent('main')).includes('Time from receipt to first contact')) fail('no time to first contact');
await check('caseloads');
await page.goto(`${base}/console/follow-ups`);
await check('follow-ups');
await page.goto(`${base}/console/referrals?view=all&follow_up=1`);
await check('worklist-follow-ups');
await signOut();

await signIn('ada');
await page.goto(`${base}/console/deliveries`);
await check('deliveries');
await page.goto(`${base}/console/registries`);
if (!(await page.textContent('main')).includes('K83999')) fail('the endpoint is not listed');
await check('registries');
await page.goto(`${referralUrl}/audit`);
if (!(await page.textContent('main')).includes('console:transition')) fail('the audit trail lacks the transitions');
await check('audit-trail');
// The audit: a referral found by its id, a search by who over a window, a refused search.
const referralId = referralUrl.split('/').pop();
await page.goto(`${base}/console/audit`);
await check('audit');
await page.fill('#find', referralId);
await Promise.all([page.waitForURL('**/console/audit?find=*'), page.click('button:has-text("Find")')]);
if (!(await page.textContent('main')).includes(`Audit trail of ${referralId}`)) fail('the look-up did not find the referral');
await check('audit-found');
const today = new Date();
const day = (d) => new Date(today.getTime() + d * 86400000).toISOString().slice(0, 10);
await page.goto(`${base}/console/audit?who=amara&from=${day(-1)}&to=${day(1)}`);
if (!(await page.textContent('main')).includes('console:transition')) fail('the search by who lacks Amara\'s transitions');
await check('audit-who');
await page.goto(`${base}/console/audit?from=${day(-1)}`);
if (!(await page.textContent('.nhsuk-error-summary')).includes('Enter who to search for')) fail('no error summary');
await check('audit-missing-who');
// People: stop a provider's person being assignable.
await page.goto(`${base}/console/people`);
await check('people');
await Promise.all([page.waitForURL('**/console/people?changed=*'), page.click('button:has-text("Stop assigning")')]);
if (!(await page.textContent('main')).includes('can no longer be assigned referrals')) fail('no confirmation');
await check('people-inactive');
await signOut();

await browser.close();
console.log('ok all');
