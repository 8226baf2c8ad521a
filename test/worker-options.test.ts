import assert from 'node:assert/strict';
import { parseWorkerDuration } from '../src/worker/worker';

describe('worker options', () => {
  const heartbeat = (text: string) => parseWorkerDuration('WEIGHTFORMER_HEARTBEAT_INTERVAL', text, 50, 60_000);

  it('reads a duration in ms or s', () => {
    assert.equal(heartbeat('250ms'), 250);
    assert.equal(heartbeat('2s'), 2000);
    assert.equal(heartbeat(' 0.5s '), 500);
  });

  it('refuses a value that is not a duration or is out of range, naming the variable and the range', () => {
    for (const bad of ['', '2', 'fast', '-1s', '10ms', '61s', '1m']) {
      assert.throws(() => heartbeat(bad), /WEIGHTFORMER_HEARTBEAT_INTERVAL: '.*' is not a duration between 50ms and 60s/, bad);
    }
    assert.throws(() => parseWorkerDuration('WEIGHTFORMER_OUTBOX_REPLAY_INTERVAL', '500ms', 1000, 3_600_000), /between 1s and 3600s/);
  });
});
