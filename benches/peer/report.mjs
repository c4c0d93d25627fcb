// Reads the JSON lines of benches/peer.sh's rounds (each with "round" and
// "validator" fields) on standard input and prints a Markdown table: for
// each measure and round, Sprig's figure, medplum's, and the ratio computed
// from that same round. Then the issue's targets, checked against the worst
// round. Exit status 0 whatever the figures: performance is reported, not asserted.

import { readFileSync } from 'node:fs';

const lines = readFileSync(0, 'utf8')
  .split('\n')
  .filter((l) => l.trim().startsWith('{'))
  .map((l) => JSON.parse(l));

const rounds = [...new Set(lines.map((l) => l.round))].sort((a, b) => a - b);
const get = (round, validator, kase) =>
  lines.find((l) => l.round === round && l.validator === validator && l.case === kase);

// [label, case, field, unit, ratio]: 'slower' is medplum ÷ sprig (time,
// memory: how many times more medplum needs), 'faster' is sprig ÷ medplum
// (throughput: how many times more Sprig does).
const measures = [
  ['Bundle (20 entries) p50', 'bundle-20', 'p50_us', 'µs', 'slower'],
  ['Bundle (20 entries) p99', 'bundle-20', 'p99_us', 'µs', 'slower'],
  ['Bundle (20 entries) mean', 'bundle-20', 'mean_us', 'µs', 'slower'],
  ['Bundle (20 entries) p50, CPU time', 'bundle-20', 'cpu_p50_us', 'µs', 'slower'],
  ['Bundle (20 entries) p99, CPU time', 'bundle-20', 'cpu_p99_us', 'µs', 'slower'],
  ['R4 examples, all (resources/s)', 'r4-examples', 'per_second', '/s', 'faster'],
  ['R4 examples, all (MiB/s)', 'r4-examples', 'mib_per_second', 'MiB/s', 'faster'],
  ['R4 clinical examples (resources/s)', 'r4-clinical-examples', 'per_second', '/s', 'faster'],
  ['Start-up (definitions + first ServiceRequest)', 'startup', 'ms', 'ms', 'slower'],
  ['RSS after start-up', 'memory', 'rss_after_startup_mib', 'MiB', 'slower'],
  ['Peak RSS (examples in memory)', 'memory', 'peak_rss_mib', 'MiB', 'slower'],
];

const fmt = (x, unit) => {
  if (x === undefined || x === null) {
    return '–';
  }
  const digits = x >= 100 ? 0 : x >= 10 ? 1 : 2;
  return `${x.toLocaleString('en-GB', { minimumFractionDigits: digits, maximumFractionDigits: digits })} ${unit}`;
};

const out = [];
out.push('| measure | round | Sprig | @medplum/core | ratio |');
out.push('|---|---|---|---|---|');
for (const [label, kase, field, unit, direction] of measures) {
  for (const round of rounds) {
    const sprig = get(round, 'sprig', kase)?.[field];
    const medplum = get(round, 'medplum', kase)?.[field];
    if (sprig === undefined && medplum === undefined) {
      continue;
    }
    let ratio = '–';
    if (sprig && medplum) {
      const r = direction === 'slower' ? medplum / sprig : sprig / medplum;
      ratio = `${r.toFixed(r >= 10 ? 0 : 1)}× ${direction === 'slower' ? '(medplum ÷ Sprig)' : '(Sprig ÷ medplum)'}`;
    }
    out.push(`| ${label} | ${round} | ${fmt(sprig, unit)} | ${fmt(medplum, unit)} | ${ratio} |`);
  }
}
console.log(out.join('\n'));

// Findings: what each validator said about the inputs (from the last round;
// the inputs and the validators are the same in every round).
const last = rounds[rounds.length - 1];
console.log('\nFindings (errors / warnings) on the inputs:');
for (const validator of ['sprig', 'medplum']) {
  const bundle = get(last, validator, 'bundle-20');
  const parts = [];
  if (bundle) {
    parts.push(`Bundle: ${bundle.errors} errors, ${bundle.warnings} warnings, ${bundle.information} information`);
  }
  for (const kase of ['r4-examples', 'r4-clinical-examples']) {
    const e = get(last, validator, kase);
    if (e) {
      parts.push(`${kase}: ${e.files_with_errors} of ${e.resources} resources with errors (${e.errors} errors)`);
    }
  }
  console.log(`- ${validator}: ${parts.join('; ')}`);
}
const all = get(last, 'sprig', 'schema-all-types');
if (all) {
  console.log(
    `- sprig, schema of all ${all.types} resource types compiled at once (never done in service; a type compiles on first use): ${fmt(all.ms, 'ms')}`
  );
}

// The issue's targets, against the worst round.
const worst = (validator, kase, field, pick) => {
  const values = rounds.map((r) => get(r, validator, kase)?.[field]).filter((x) => x !== undefined);
  return values.length ? pick(...values) : undefined;
};
const p99 = worst('sprig', 'bundle-20', 'p99_us', Math.max);
const cpuP99 = worst('sprig', 'bundle-20', 'cpu_p99_us', Math.max);
const throughputRatios = rounds
  .map((r) => {
    const s = get(r, 'sprig', 'r4-examples')?.per_second;
    const m = get(r, 'medplum', 'r4-examples')?.per_second;
    return s && m ? s / m : undefined;
  })
  .filter((x) => x !== undefined);
const rss = worst('sprig', 'memory', 'rss_after_startup_mib', Math.max);
const verdict = (ok) => (ok === undefined ? 'not measured' : ok ? 'met' : 'NOT met');
console.log('\nTargets (worst round):');
console.log(
  `- Sprig p99 per referral Bundle under 1 ms: ${p99 === undefined ? '–' : fmt(p99, 'µs')}: ${verdict(p99 === undefined ? undefined : p99 < 1000)}` +
    (cpuP99 === undefined ? '' : ` (in CPU time: ${fmt(cpuP99, 'µs')}: ${verdict(cpuP99 < 1000)})`)
);
const minRatio = throughputRatios.length ? Math.min(...throughputRatios) : undefined;
console.log(
  `- at least 10× medplum's throughput (R4 examples, resources/s): ${minRatio === undefined ? '–' : `${minRatio.toFixed(1)}×`}: ${verdict(minRatio === undefined ? undefined : minRatio >= 10)}`
);
console.log(
  `- Sprig RSS after start-up under 100 MiB: ${rss === undefined ? '–' : fmt(rss, 'MiB')}: ${verdict(rss === undefined ? undefined : rss < 100)}`
);
