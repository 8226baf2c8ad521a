import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { bundleWorkflowCode, Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { DeterminismViolationError } from '@temporalio/workflow';
import { workflowBundle } from '../src/worker/worker';

/*
 * Upgrades: workflow code changes while pipelines run. Each change is guarded by `patched('<id>')`, so an
 * execution started by the previous version replays its old path on the new workers. These histories were
 * recorded by earlier versions of the workflow code (test/fixtures/histories/, upgrade/ by
 * test/fixtures/record-previous-version.ts) and must all replay on today's code. A control bundle of
 * today's code with the `html-report` patch taken away (its new branch always on) must NOT replay them:
 * it is the patch that makes the upgrade safe, and this test can tell.
 */

const ROOT = path.resolve(__dirname, '../..');
const HISTORIES = path.join(ROOT, 'test', 'fixtures', 'histories');
const UPGRADE = path.join(HISTORIES, 'upgrade');

interface RecordedHistory {
  events: Array<Record<string, unknown>>;
}

async function load(file: string): Promise<RecordedHistory> {
  return JSON.parse(await fs.readFile(file, 'utf8')) as RecordedHistory;
}

/** The histories recorded before the `html-report` change: the original fixture and the upgrade/ ones. */
async function historiesBeforeHtmlReport(): Promise<string[]> {
  const upgrade = (await fs.readdir(UPGRADE)).filter((f) => f.endsWith('-before-html-report.json')).map((f) => path.join(UPGRADE, f));
  return [path.join(HISTORIES, 'pipeline-schema-v1.json'), ...upgrade];
}

/** Today's workflow code (dist/workflows) with `pattern` replaced in every file: a change made without a patch. */
async function bundleWithEdit(pattern: RegExp, replacement: string, what: string): Promise<WorkflowBundleWithSourceMap> {
  const source = path.join(ROOT, 'dist', 'workflows');
  const copy = path.join(ROOT, 'dist', `workflows-edited-${process.pid}`, 'workflows');
  await fs.mkdir(copy, { recursive: true });
  let replaced = 0;
  for (const file of (await fs.readdir(source)).filter((f) => f.endsWith('.js'))) {
    const text = await fs.readFile(path.join(source, file), 'utf8');
    const edited = text.replace(pattern, () => {
      replaced += 1;
      return replacement;
    });
    await fs.writeFile(path.join(copy, file), edited);
  }
  assert.ok(replaced > 0, `today's workflows/ has no ${what} to edit`);
  try {
    return await bundleWorkflowCode({ workflowsPath: path.join(copy, 'index.js'), logger: { trace() {}, debug() {}, info() {}, warn() {}, error() {}, log() {} } as never });
  } finally {
    await fs.rm(path.dirname(copy), { recursive: true, force: true });
  }
}

/** Today's workflow code with `patched('html-report')` replaced by `true`: the change made without a patch. */
function bundleWithoutHtmlReportPatch(): Promise<WorkflowBundleWithSourceMap> {
  return bundleWithEdit(/\(0, workflow_1\.patched\)\('html-report'\)/g, 'true', "patched('html-report')");
}

/** The id each history was recorded under: the file's name (record-previous-version.ts), or the original fixture's. */
function workflowIdOf(file: string): string {
  return path.dirname(file) === UPGRADE ? path.basename(file, '.json') : 'replay-fixture';
}

function activityTypes(history: RecordedHistory): string[] {
  return history.events
    .map((e) => (e.activityTaskScheduledEventAttributes as { activityType?: { name?: string } } | undefined)?.activityType?.name)
    .filter((n): n is string => typeof n === 'string');
}

describe('upgrades: histories of earlier workflow versions replay on the current code', function () {
  this.timeout(300_000);
  let files: string[];

  before(async () => {
    files = await historiesBeforeHtmlReport();
  });

  it('has histories of a single pipeline and of a sweep recorded before the html-report change', async () => {
    const names = files.map((f) => path.basename(f));
    assert.ok(names.includes('pipeline-before-html-report.json') && names.includes('sweep-before-html-report.json'), names.join(', '));
    for (const file of files) {
      const history = await load(file);
      assert.ok(history.events.length > 5, file);
      // Recorded by a version without the report activity, and finished.
      assert.ok(!activityTypes(history).includes('writeReport'), file);
      assert.ok(history.events.some((e) => e.workflowExecutionCompletedEventAttributes), `${file} did not complete`);
    }
  });

  it('has histories recorded after the html-report change, with its patch marker', async () => {
    // These guard the next change: they replay today and must keep replaying after it.
    for (const kind of ['pipeline', 'sweep']) {
      const history = await load(path.join(UPGRADE, `${kind}-with-html-report.json`));
      assert.ok(history.events.some((e) => e.markerRecordedEventAttributes), `${kind}: no patch marker`);
      assert.ok(activityTypes(history).includes('writeReport'), `${kind}: no writeReport activity`);
    }
  });

  it('has a registry watcher history: a poll, a child consolidation, a timer, a poll with nothing new, the stop signal', async () => {
    const history = await load(path.join(UPGRADE, 'watch-with-html-report.json'));
    assert.deepEqual(activityTypes(history), ['pollTeacherVersions', 'pollTeacherVersions']);
    const types = history.events.map((e) => String(e.eventType));
    for (const t of ['CHILD_WORKFLOW_EXECUTION_COMPLETED', 'TIMER_FIRED', 'WORKFLOW_EXECUTION_SIGNALED', 'WORKFLOW_EXECUTION_COMPLETED']) {
      assert.ok(types.some((e) => e.endsWith(t)), `no ${t}`);
    }
  });

  it('replays every recorded history, before and after the change, without nondeterminism', async () => {
    const bundle = await workflowBundle();
    const after = (await fs.readdir(UPGRADE)).filter((f) => f.endsWith('-with-html-report.json')).map((f) => path.join(UPGRADE, f));
    for (const file of [...files, ...after]) {
      await Worker.runReplayHistory({ workflowBundle: bundle }, await load(file), workflowIdOf(file));
    }
  });

  it('the same change without patched() breaks those histories (control)', async () => {
    const bundle = await bundleWithoutHtmlReportPatch();
    for (const file of files) {
      await assert.rejects(
        Worker.runReplayHistory({ workflowBundle: bundle }, await load(file), workflowIdOf(file)),
        (err: unknown) => err instanceof DeterminismViolationError,
        `${path.basename(file)} replayed on the unpatched change`,
      );
    }
  });

  it('a watcher that polls twice where it polled once breaks the watcher history (control)', async () => {
    const bundle = await bundleWithEdit(
      /poll = await registry\.pollTeacherVersions\(\{ spec \}\);/g,
      'await registry.pollTeacherVersions({ spec }); poll = await registry.pollTeacherVersions({ spec });',
      "the watcher's registry poll",
    );
    const file = path.join(UPGRADE, 'watch-with-html-report.json');
    await assert.rejects(
      Worker.runReplayHistory({ workflowBundle: bundle }, await load(file), workflowIdOf(file)),
      (err: unknown) => err instanceof DeterminismViolationError,
      'the watcher history replayed on a changed watcher',
    );
  });
});
