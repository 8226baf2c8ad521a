import assert from 'node:assert/strict';
import { initBackend } from '../src/ml/backend';
import { tf } from '../src/ml/tf';
import { asParams, studentRows } from '../src/ml/weightformer/model';
import { disposeMetaStepParts, metaStepParts, metaStepRig } from '../bench/meta-step';
import { plainStudentRows } from '../bench/plain-port';

/**
 * The plain port exists to make the dispatch saving a measured figure: it must compute what the batched
 * model computes (or the comparison is meaningless), and the batched step must stay ≥ 4× leaner.
 */
describe('bench: the plain port of the prototype vs the batched WeightFormer', function () {
  this.timeout(300_000);
  before(async () => {
    await initBackend('cpu');
  });

  for (const crossLayer of [true, false]) {
    it(`computes the same student rows as studentRows (crossLayer ${crossLayer}, T = 3, trained-like output adapters)`, async () => {
      const parts = metaStepParts({ teachers: 3, batchSize: 8, hidden: [12], config: { d: 16, heads: 2, crossLayer }, seed: 3 });
      try {
        const p = asParams(parts.names, parts.params);
        const [batched, plain] = tf.tidy(() => {
          const a = studentRows(p, parts.constants, parts.set);
          const b = plainStudentRows(p, parts.constants, parts.set);
          return [tf.concat(a.map((t) => tf.reshape(t, [-1]))), tf.concat(b.map((t) => tf.reshape(t, [-1])))];
        });
        const x = await batched!.data();
        const y = await plain!.data();
        tf.dispose([batched!, plain!]);
        assert.equal(x.length, y.length);
        let maxDiff = 0;
        let maxDelta = 0;
        for (let i = 0; i < x.length; i++) maxDiff = Math.max(maxDiff, Math.abs((x[i] ?? 0) - (y[i] ?? 0)));
        // The rows differ from the aligned mean (the adapters are non-zero), so equality is not trivial.
        const base = await Promise.all(parts.set.base.map((b) => b.data()));
        let at = 0;
        for (const b of base) for (let i = 0; i < b.length; i++) maxDelta = Math.max(maxDelta, Math.abs((x[at++] ?? 0) - (b[i] ?? 0)));
        assert.ok(maxDelta > 1e-4, `the student rows equal the base (${maxDelta}): the test would not see a wrong port`);
        assert.ok(maxDiff < 1e-5, `plain port and batched model differ by ${maxDiff}`);
      } finally {
        disposeMetaStepParts(parts);
      }
    });
  }

  it('takes at least 4× fewer kernels per meta-step than the plain port (tf.profile), with the same loss', async () => {
    const shape = { teachers: 4, batchSize: 16, hidden: [16], seed: 1 };
    const batched = metaStepRig(shape, 'batched');
    const plain = metaStepRig(shape, 'plain-port');
    try {
      const kb = await batched.kernels();
      const kp = await plain.kernels();
      assert.ok(kp.count >= 4 * kb.count, `plain port ${kp.count} kernels vs batched ${kb.count}: less than 4× fewer`);
      const lb = await batched.run();
      const lp = await plain.run();
      assert.ok(Number.isFinite(lb) && Math.abs(lb - lp) < 1e-5 * Math.max(1, Math.abs(lb)), `losses ${lb} vs ${lp}`);
    } finally {
      batched.dispose();
      plain.dispose();
    }
  });

  it('refuses a configuration it does not port (mixing) instead of computing something else', () => {
    const parts = metaStepParts({ teachers: 2, batchSize: 4, hidden: [8], config: { d: 8, heads: 2, mixing: true }, seed: 1 });
    try {
      assert.throws(() => tf.tidy(() => plainStudentRows(asParams(parts.names, parts.params), parts.constants, parts.set)), /mixing head is not ported/);
    } finally {
      disposeMetaStepParts(parts);
    }
  });
});
