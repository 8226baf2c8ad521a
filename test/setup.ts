import { DefaultLogger, Runtime } from '@temporalio/worker';
import { stopSharedTemporal } from './helpers/temporal';
import { stopSharedMlflow } from './helpers/mlflow';

// Tests provoke failures on purpose; the SDK logs each at WARN. Keep the test output to errors.
Runtime.install({ logger: new DefaultLogger('ERROR') });

// Mocha root hooks: servers shared by the suites are started lazily and stopped once at the end.
export const mochaHooks = {
  async afterAll(this: Mocha.Context) {
    this.timeout(60_000);
    await Promise.all([stopSharedTemporal(), stopSharedMlflow()]);
  },
};
