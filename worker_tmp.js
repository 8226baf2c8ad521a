const { Worker, isMainThread, parentPort } = require('worker_threads');
if (isMainThread) {
  const w = new Worker(__filename);
  w.on('message', (m) => { if (m.step === 10) w.postMessage('abort'); if (m.done) console.log('worker result:', m.done); });
  w.on('error', (e) => console.error('worker error', e));
} else {
  const ml = require('/work/main/dist/src/ml');
  let abort = false;
  parentPort.on('message', (m) => { if (m === 'abort') abort = true; });
  (async () => {
    console.log(await ml.initBackend('auto'));
    const split = ml.splitDataset(ml.loadEmbeddedMnist(), { source: 'mnist-embedded', shardSize: 500, consolidationSize: 0, validationSize: 0, testSize: 100, splitSeed: 1 }, 1);
    const arch = { family: 'mlp', inputSize: 784, hidden: [64], outputSize: 10, activation: 'relu' };
    ml.alignToReference(ml.initMlp(arch, 1), ml.initMlp(arch, 2));
    try {
      await ml.trainMlp({ arch, init: ml.initMlp(arch, 1), train: split.shards[0], epochs: 3, batchSize: 32, learningRate: 1e-3, seed: 5 },
        { onStep: (s) => parentPort.postMessage({ step: s.step }), shouldAbort: () => abort });
      parentPort.postMessage({ done: 'finished without abort' });
    } catch (e) { parentPort.postMessage({ done: `${e.name} at step ${e.state && e.state.step}` }); }
  })();
}
