// The bootstrap lives in src/ because the HTML report uses it and the worker images ship no bench/.
export * from '../src/util/stats';
