// Drives a running Sprig with fhir-kit-client (npm), the way a Node GP-system
// integration would: every call must succeed. Usage: node fhirkit.mjs BASE_URL EXAMPLES_DIR
// Runs every step, then exits non-zero naming the steps that failed.
import fs from 'node:fs';
import path from 'node:path';
import { Client } from 'fhir-kit-client';

const [baseUrl, examples] = process.argv.slice(2);
const client = new Client({ baseUrl });
const read = (name) => JSON.parse(fs.readFileSync(path.join(examples, name), 'utf8'));
const unique = `${Date.now()}-${Math.random().toString(16).slice(2)}`;

const failures = [];

async function step(name, fn) {
  try {
    const result = await fn();
    console.log(`ok ${name}`);
    return result;
  } catch (error) {
    const body = error.response ? JSON.stringify(error.response.data) : '';
    console.error(`FAILED ${name}: ${error.message} ${body}`);
    failures.push(name);
    return undefined;
  }
}

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

await step('capability', async () => {
  const cs = await client.capabilityStatement();
  expect(cs.resourceType === 'CapabilityStatement', 'not a CapabilityStatement');
});

const referral = read('referral-servicerequest.json');
referral.identifier[0].value = `FKC-${unique}`;
const created = await step('create', async () => {
  const sr = await client.create({ resourceType: 'ServiceRequest', body: referral });
  expect(sr.id, 'no id');
  return sr;
});
if (!created) process.exit(1);

await step('resubmission', async () => {
  const again = await client.create({ resourceType: 'ServiceRequest', body: referral });
  expect(again.id === created.id, `a resubmission made ${again.id}, not ${created.id}`);
});

await step('read', async () => {
  const sr = await client.read({ resourceType: 'ServiceRequest', id: created.id });
  expect(sr.id === created.id, 'wrong resource');
});

await step('vread', async () => {
  const sr = await client.vread({
    resourceType: 'ServiceRequest', id: created.id, version: created.meta.versionId,
  });
  expect(sr.meta.versionId === created.meta.versionId, 'wrong version');
});

await step('search with paging to the end', async () => {
  for (let i = 0; i < 3; i += 1) {
    const more = read('referral-servicerequest.json');
    more.identifier[0].value = `FKC-${unique}-${i}`;
    await client.create({ resourceType: 'ServiceRequest', body: more });
  }
  let page = await client.search({ resourceType: 'ServiceRequest', searchParams: { _count: 2 } });
  let seen = 0;
  let pages = 0;
  while (page) {
    pages += 1;
    seen += (page.entry || []).length;
    if (pages > 1000) throw new Error('paging does not end');
    page = await client.nextPage({ bundle: page });
  }
  expect(seen >= 4 && pages >= 2, `saw ${seen} referrals on ${pages} pages`);
});

await step('resolve a reference from a search result', async () => {
  const bundle = await client.search({
    resourceType: 'ServiceRequest', searchParams: { identifier: `${referral.identifier[0].system}|${referral.identifier[0].value}` },
  });
  expect(bundle.entry && bundle.entry.length === 1, 'identifier search did not find it');
  const again = await client.resolve({ reference: bundle.entry[0].fullUrl });
  expect(again.id === created.id, 'fullUrl does not resolve');
});

await step('transaction', async () => {
  const bundle = read('referral-transaction-bundle.json');
  bundle.entry[0].resource.identifier[0].value = `FKC-TX-${unique}`;
  bundle.entry[0].request.ifNoneExist = `identifier=${bundle.entry[0].resource.identifier[0].system}|FKC-TX-${unique}`;
  const answer = await client.transaction({ body: bundle });
  expect(answer.type === 'transaction-response', `got ${answer.type}`);
});

await step('$process-message', async () => {
  const message = read('referral-message-bundle.json');
  message.id = crypto.randomUUID();
  for (const entry of message.entry) {
    if (entry.resource.resourceType === 'ServiceRequest') entry.resource.identifier[0].value = `FKC-MSG-${unique}`;
  }
  const answer = await client.operation({ name: 'process-message', method: 'POST', input: message });
  expect(answer.resourceType === 'Bundle' && answer.type === 'message', 'no reply message');
});

await step('$validate', async () => {
  const outcome = await client.operation({
    name: 'validate', resourceType: 'ServiceRequest', method: 'POST', input: referral,
  });
  expect(outcome.resourceType === 'OperationOutcome', 'no OperationOutcome');
});

await step('update', async () => {
  const current = await client.read({ resourceType: 'ServiceRequest', id: created.id });
  current.note = [{ text: 'Prefers a morning call.' }];
  const updated = await client.update({
    resourceType: 'ServiceRequest', id: created.id, body: current,
    options: { headers: { 'If-Match': `W/"${current.meta.versionId}"` } },
  });
  expect(updated.meta.versionId !== current.meta.versionId, 'no new version');
});

await step('history', async () => {
  const history = await client.history({ resourceType: 'ServiceRequest', id: created.id });
  expect(history.type === 'history' && history.entry.length >= 2, 'history lacks the update');
});

if (failures.length > 0) {
  console.error(`${failures.length} step(s) failed: ${failures.join('; ')}`);
  process.exit(1);
}
