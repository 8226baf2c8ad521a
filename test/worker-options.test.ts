import assert from 'node:assert/strict';
import { parseHeartbeatInterval } from '../src/worker/worker';

describe('worker options', () => {
  it('reads a heartbeat interval in ms or s', () => {
    assert.equal(parseHeartbeatInterval('250ms'), '250ms');
    assert.equal(parseHeartbeatInterval('2s'), '2000ms');
    assert.equal(parseHeartbeatInterval(' 0.5s '), '500ms');
  });

  it('refuses an interval that is not a duration or is outside 50 ms – 60 s, naming the variable', () => {
    for (const bad of ['', '2', 'fast', '-1s', '10ms', '61s', '1m']) {
      assert.throws(() => parseHeartbeatInterval(bad), /WEIGHTFORMER_HEARTBEAT_INTERVAL: '.*' is not a duration between 50ms and 60s/, bad);
    }
  });
});
