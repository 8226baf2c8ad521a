import * as path from 'node:path';
import { startTemporalDevServer, type TemporalDevServer } from './temporal-server';
import { startMlflowServer } from './mlflow-server';

export interface EmbeddedStack {
  temporalAddress: string;
  temporalUiUrl: string;
  mlflowUrl: string;
  stop(): Promise<void>;
}

/**
 * The local stack `weightformer run` and `dev` use when TEMPORAL_ADDRESS is unset: a Temporal dev server
 * on a SQLite file and (unless MLFLOW_TRACKING_URI names one) an MLflow server with a sqlite store and
 * local artifacts, both on free loopback ports, all state under `stateDir`.
 */
export async function startEmbeddedStack(opts: { stateDir: string; mlflowUrl?: string | undefined; log?: (line: string) => void }): Promise<EmbeddedStack> {
  const log = opts.log ?? (() => undefined);
  log(`starting the local Temporal dev server and MLflow server (state in ${opts.stateDir})`);
  const [temporalStart, mlflowStart] = await Promise.allSettled([
    startTemporalDevServer({ stateDir: path.join(opts.stateDir, 'temporal') }),
    opts.mlflowUrl ? Promise.resolve(null) : startMlflowServer({ stateDir: path.join(opts.stateDir, 'mlflow') }),
  ]);
  if (temporalStart.status === 'rejected' || mlflowStart.status === 'rejected') {
    // Leave nothing running behind a half-started stack.
    if (temporalStart.status === 'fulfilled') await temporalStart.value.stop();
    if (mlflowStart.status === 'fulfilled') await mlflowStart.value?.stop();
    throw temporalStart.status === 'rejected' ? temporalStart.reason : (mlflowStart as PromiseRejectedResult).reason;
  }
  const temporal: TemporalDevServer = temporalStart.value;
  const mlflow = mlflowStart.value;
  return {
    temporalAddress: temporal.address,
    temporalUiUrl: temporal.uiUrl,
    mlflowUrl: opts.mlflowUrl ?? mlflow!.url,
    async stop() {
      await Promise.all([temporal.stop(), mlflow?.stop()]);
    },
  };
}
