// The worker's workflowsPath: everything exported here is a workflow, a query or a signal.
export { pipeline, progressQuery, cancelSignal } from './pipeline';
export { watch, watchStatusQuery, pollNowSignal, stopWatchSignal } from './watch';
