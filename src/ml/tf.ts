/**
 * The one import of TensorFlow.js for the ML library.
 *
 * Importing tfjs-core through here guarantees the gradients are registered (tfjs-core ships none; see
 * `gradients.ts`) before any code differentiates. Backends are chosen in `backend.ts`.
 */
import * as tf from '@tensorflow/tfjs-core';
import { registerGradients } from './gradients';

registerGradients();

export { tf };
