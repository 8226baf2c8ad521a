/** Loaders for the standard dataset files (MNIST IDX, CIFAR-10/100 binary) and image augmentation. */
export type { DataSplit, IdxArray, ImageDataset, MnistIdxOptions, ParseIdxOptions } from './idx';
export { loadMnistIdx, MAX_DATA_BYTES, parseIdx } from './idx';
export type { Cifar10Options, Cifar100Options, CifarRecordFormat } from './cifar';
export { CIFAR10_FORMAT, CIFAR_PIXELS, loadCifar10, loadCifar100, parseCifarBatch } from './cifar';
export type { AugmentOptions, ImageTransform } from '../augment';
export { applyTransform, augmentBatch, drawTransform } from '../augment';
